//! Who is calling, and what they may do: identities from client certificates (subject CN
//! and SANs) or from unix-socket peer credentials, mapped to [`Role`]s by `[api]`; and a
//! per-identity token bucket that limits POST requests. Roles are computed once per
//! connection from the config in force when it was accepted (a SIGHUP applies to new
//! connections).

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::{ApiConfig, Role};

/// A caller, as the audit log and a capture's manifest name it.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The matched certificate name (`alice`), `unknown:<names>` for a verified
    /// certificate with no roles, or `uid:<uid>(<user>)` on the unix socket.
    pub identity: String,
    /// Where from: `127.0.0.1:51234`, or `pid 4242 uid 1000 gid 1000` on the socket.
    pub from: String,
    /// `mtls` or `unix`.
    pub transport: &'static str,
    pub roles: BTreeSet<Role>,
}

impl Peer {
    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role) || self.roles.contains(&Role::Admin)
    }
}

/// A caller on the local socket: root and the daemon's own user are `admin` (they could
/// read the evidence directory anyway); anyone else got through the socket's 0660 mode as
/// a member of `socket_group` and gets `socket_roles`.
pub fn unix_peer(api: &ApiConfig, uid: u32, gid: u32, pid: Option<i32>) -> Peer {
    let user = nix::unistd::User::from_uid(uid.into())
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| "?".into());
    let roles = if uid == 0 || uid == nix::unistd::geteuid().as_raw() {
        BTreeSet::from([Role::Admin, Role::Trigger, Role::Read])
    } else {
        api.socket_roles.iter().copied().collect()
    };
    let pid = pid.map(|p| format!("pid {p} ")).unwrap_or_default();
    Peer {
        identity: format!("uid:{uid}({user})"),
        from: format!("{pid}uid {uid} gid {gid}"),
        transport: "unix",
        roles,
    }
}

/// A caller with a verified client certificate (DER). Every name of the certificate (the
/// subject's CNs, then DNS, email and URI SANs) that `[api.roles]` lists contributes its
/// roles; the identity is the first such name.
pub fn cert_peer(api: &ApiConfig, cert_der: &[u8], from: String) -> Peer {
    let names = cert_names(cert_der);
    let mut identity = None;
    let mut roles = BTreeSet::new();
    for name in &names {
        if let Some(granted) = api.roles.get(name) {
            identity.get_or_insert_with(|| name.clone());
            roles.extend(granted.iter().copied());
        }
    }
    Peer {
        identity: identity.unwrap_or_else(|| format!("unknown:{}", names.join(","))),
        from,
        transport: "mtls",
        roles,
    }
}

/// The subject CNs and the DNS, email and URI subject alternative names of a certificate.
pub fn cert_names(der: &[u8]) -> Vec<String> {
    use x509_parser::prelude::{FromDer as _, GeneralName, X509Certificate};
    let Ok((_, cert)) = X509Certificate::from_der(der) else {
        return Vec::new();
    };
    let mut names: Vec<String> = cert
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok().map(str::to_owned))
        .collect();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(s) | GeneralName::RFC822Name(s) | GeneralName::URI(s) => {
                    names.push((*s).to_owned())
                }
                _ => {}
            }
        }
    }
    names.dedup();
    names
}

/// Per-identity token buckets: `burst` tokens, refilled at `per_minute`.
#[derive(Debug, Default)]
pub struct RateLimiter {
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    /// Takes a token for `identity`, or says how long until one is available.
    pub fn take(&self, identity: &str, burst: u32, per_minute: u32) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let burst = f64::from(burst);
        let rate = f64::from(per_minute) / 60.0;
        let (tokens, last) = buckets.entry(identity.to_owned()).or_insert((burst, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * rate).min(burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else if rate > 0.0 {
            Err(Duration::from_secs_f64(((1.0 - *tokens) / rate).ceil()))
        } else {
            Err(Duration::from_secs(3600))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_burst_then_refuses_with_a_wait() {
        let r = RateLimiter::default();
        for _ in 0..3 {
            r.take("a", 3, 6).unwrap();
        }
        let wait = r.take("a", 3, 6).unwrap_err();
        assert!(wait <= Duration::from_secs(10) && wait >= Duration::from_secs(1));
        // Another identity has its own bucket.
        r.take("b", 3, 6).unwrap();
    }

    #[test]
    fn unknown_certificate_has_no_roles() {
        let api = ApiConfig::default();
        let p = cert_peer(&api, b"not a certificate", "x".into());
        assert!(p.roles.is_empty());
        assert!(p.identity.starts_with("unknown:"));
    }

    #[test]
    fn admin_implies_every_role() {
        let p = Peer {
            identity: "x".into(),
            from: "y".into(),
            transport: "unix",
            roles: BTreeSet::from([Role::Admin]),
        };
        assert!(p.has(Role::Trigger) && p.has(Role::Read));
    }
}
