//! Profiling pipeline (stub; being written).
use anyhow::Result;
pub struct ProfileRequest;
impl ProfileRequest {
    pub fn from_cli(_a: &crate::cli::profile::ProfileArgs) -> Result<Self> {
        Ok(Self)
    }
}
pub fn run(_r: &ProfileRequest) -> Result<String> {
    Ok(String::new())
}
