//! The TOML configuration file (`/etc/hindsight/hindsight.toml` unless `--config` says
//! otherwise): one section per subsystem, each `#[serde(default, deny_unknown_fields)]`
//! so a missing section or key takes the documented default and a misspelt key is an
//! error that names it. Later sections (`[api]`, `[profile]`) are added as fields of
//! [`Config`].

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::paths;

/// Errors loading the configuration. Each names the file, and the key when one is at
/// fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Syntax errors, unknown keys and wrongly typed values; toml's message names the key
    /// and the line.
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid config file {path}: key `{key}`: {message}")]
    Value {
        path: PathBuf,
        key: String,
        message: String,
    },
}

/// The whole configuration file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `[capture]`: evidence capture.
    pub capture: CaptureConfig,
    /// `[api]`: the daemon's local socket, mutual-TLS listener, roles and request limits.
    pub api: ApiConfig,
    /// `[daemon]`: the daemon's job queue, worker priority and profile storage.
    pub daemon: DaemonConfig,
    /// `[recorder]`: the daemon's flight recorder (continuous profiling kept in memory and
    /// bundled into every capture).
    pub recorder: crate::recorder::RecorderConfig,
    /// `[history]`: the daemon's exec history (see `crate::history`).
    pub history: crate::history::HistoryConfig,
    /// `[preserve]`: the staging area of `hindsight preserve`.
    pub preserve: crate::history::staging::PreserveConfig,
    /// `[[triggers]]`: automatic capture rules (see `crate::triggers`). Default: none.
    pub triggers: Vec<crate::triggers::TriggerRule>,
}

/// A role granted to a caller of the daemon's API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Start captures and profiles.
    Trigger,
    /// List and get captures and profiles, download archives, signatures and profiles,
    /// read /metrics.
    Read,
    /// Everything, plus `POST /v1/reload`.
    Admin,
}

/// `[api]`: how the daemon (`hindsight agent`) is reached and who may do what.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// The local control socket (HTTP over a unix socket). Default:
    /// /run/hindsight/hindsight.sock.
    pub socket: PathBuf,
    /// Group owning the socket (mode 0660): its members may connect. Default: none (the
    /// daemon's own group).
    pub socket_group: Option<String>,
    /// Roles of local callers that are neither root nor the daemon's own user (both of
    /// which are always `admin`), i.e. members of `socket_group`. Default: trigger, read.
    pub socket_roles: Vec<Role>,
    /// Address of the HTTPS (mutual TLS) listener, e.g. "0.0.0.0:7443". Default: none, no
    /// network listener. There is no plaintext network listener.
    pub listen: Option<String>,
    /// CA bundle (PEM) that client certificates must chain to. Required with `listen`.
    /// Default: /etc/hindsight/clients-ca.pem.
    pub ca: PathBuf,
    /// Server certificate chain (PEM). Default: /etc/hindsight/server.pem.
    pub cert: PathBuf,
    /// Server private key (PEM). Default: /etc/hindsight/server.key.
    pub key: PathBuf,
    /// Client certificate identity (subject CN or a SAN) -> roles. A verified certificate
    /// whose names are all absent here gets 403. Default: empty.
    pub roles: std::collections::BTreeMap<String, Vec<Role>>,
    /// Append-only audit log (JSON lines). Default: /var/log/hindsight/audit.jsonl.
    pub audit_log: PathBuf,
    /// Largest request body accepted (larger: 413). Default: 65536.
    pub max_body_bytes: u64,
    /// Seconds a client has to send a request's headers, and its body, and to finish a
    /// TLS handshake. Default: 10.
    pub request_timeout_secs: u64,
    /// Per-identity rate limit on POST requests: bucket size. Default: 10.
    pub rate_burst: u32,
    /// Per-identity rate limit on POST requests: tokens added per minute. Default: 6.
    pub rate_per_minute: u32,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            socket: PathBuf::from(paths::DEFAULT_SOCKET),
            socket_group: None,
            socket_roles: vec![Role::Trigger, Role::Read],
            listen: None,
            ca: PathBuf::from(paths::DEFAULT_CLIENTS_CA),
            cert: PathBuf::from(paths::DEFAULT_SERVER_CERT),
            key: PathBuf::from(paths::DEFAULT_SERVER_KEY),
            roles: Default::default(),
            audit_log: PathBuf::from(paths::DEFAULT_AUDIT_LOG),
            max_body_bytes: 64 * 1024,
            request_timeout_secs: 10,
            rate_burst: 10,
            rate_per_minute: 6,
        }
    }
}

/// `[daemon]`: how `hindsight agent` runs jobs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DaemonConfig {
    /// Jobs waiting behind the running one, per kind (captures; profiles); more: 429.
    /// Default: 4.
    pub queue_size: usize,
    /// Niceness added to the worker threads that run captures and profiles (their I/O
    /// runs in the best-effort class at the lowest priority, 7). Default: 10.
    pub worker_nice: i32,
    /// Where profiles started through the API are written, one directory each. Default:
    /// /var/lib/hindsight/profiles.
    pub profile_dir: PathBuf,
    /// Retention: profile directories kept (the oldest are removed). Default: 20.
    pub keep_profiles: usize,
    /// Longest profile the API accepts, in seconds. Default: 300.
    pub max_profile_seconds: f64,
    /// Jobs (captures and profiles) remembered for status queries. Default: 200.
    pub keep_jobs: usize,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        Self {
            queue_size: 4,
            worker_nice: 10,
            profile_dir: PathBuf::from(paths::DEFAULT_PROFILE_DIR),
            keep_profiles: 20,
            max_profile_seconds: 300.0,
            keep_jobs: 200,
        }
    }
}

const MIB: u64 = 1024 * 1024;

/// `[capture]`: what `hindsight capture` collects, where it writes, and how much it
/// keeps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CaptureConfig {
    /// Directory for archives and their signatures. Default: /var/lib/hindsight/evidence.
    pub output_dir: PathBuf,
    /// minisign secret key (from `hindsight keygen`). Default: /etc/hindsight/signing.key.
    pub signing_key: PathBuf,
    /// Config file globs, captured redacted. Default: a Debian host's usual suspects
    /// (hosts, resolv.conf, sysctl, sshd_config, nginx, ...; see paths::DEFAULT_CONFIGS).
    pub configs: Vec<String>,
    /// Log file globs; each match's rotated siblings (x.log.1, x.log.2.gz,
    /// x.log-20261201, ...) are included. Default: syslog, kern.log, auth.log, nginx, ...
    pub logs: Vec<String>,
    /// Globs never captured, added to the built-in list (/etc/shadow, private keys, ...,
    /// see paths::DEFAULT_EXCLUDES, which cannot be switched off). Default: empty.
    pub exclude: Vec<String>,
    /// Largest part of one file kept; logs keep their newest end, configs their start.
    /// Default: 256 MiB.
    pub max_file_bytes: u64,
    /// Largest total of member bytes (before compression) in one archive; once reached,
    /// further files are skipped and recorded. Default: 4 GiB.
    pub max_total_bytes: u64,
    /// Memory-map lines kept per process. Default: 500.
    pub max_map_lines: usize,
    /// How far back the systemd journal is captured, in seconds (0 = not at all).
    /// Default: 3600.
    pub journal_seconds: u64,
    /// zstd level, 1 (fast) to 19 (small). Default: 3.
    pub zstd_level: i32,
    /// Retention: keep at most this many archives in output_dir (0 = no limit).
    /// Default: 20.
    pub keep_archives: usize,
    /// Retention: keep at most this many bytes of archives in output_dir (0 = no limit);
    /// the newest archive is always kept. Default: 10 GiB.
    pub keep_bytes: u64,
    /// `[capture.redact]`: secret redaction.
    pub redact: RedactConfig,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        Self {
            output_dir: PathBuf::from(paths::DEFAULT_EVIDENCE_DIR),
            signing_key: PathBuf::from(paths::DEFAULT_SIGNING_KEY),
            configs: paths::DEFAULT_CONFIGS
                .iter()
                .map(|s| s.to_string())
                .collect(),
            logs: paths::DEFAULT_LOGS.iter().map(|s| s.to_string()).collect(),
            exclude: Vec::new(),
            max_file_bytes: 256 * MIB,
            max_total_bytes: 4096 * MIB,
            max_map_lines: 500,
            journal_seconds: 3600,
            zstd_level: 3,
            keep_archives: 20,
            keep_bytes: 10 * 1024 * MIB,
            redact: RedactConfig::default(),
        }
    }
}

/// `[capture.redact]`: values of keys whose name contains one of `keys`
/// (case-insensitive) are replaced by `[REDACTED]` in configs and process environments;
/// PEM private-key blocks, passwords in URLs (`scheme://user:PASSWORD@host`) and AWS
/// access key ids are always redacted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedactConfig {
    /// Key-name fragments that mark a secret. Default: password, passwd, secret, token,
    /// api_key, apikey, api-key, access_key, private_key, credential, auth_key,
    /// session_key, aws_secret.
    pub keys: Vec<String>,
    /// Extra regular expressions whose matches are replaced by `[REDACTED]`. Default:
    /// none.
    pub patterns: Vec<String>,
}

impl Default for RedactConfig {
    fn default() -> Self {
        let keys = [
            "password",
            "passwd",
            "secret",
            "token",
            "api_key",
            "apikey",
            "api-key",
            "access_key",
            "private_key",
            "credential",
            "auth_key",
            "session_key",
            "aws_secret",
        ];
        Self {
            keys: keys.iter().map(|s| s.to_string()).collect(),
            patterns: Vec::new(),
        }
    }
}

impl Config {
    /// Reads and validates `path`. When `path` is the default location and does not
    /// exist, the defaults apply (a fresh host needs no config file); an explicitly given
    /// file must exist.
    pub fn load(path: &Path, explicit: bool) -> Result<Self, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text, path),
            Err(err) if !explicit && err.kind() == std::io::ErrorKind::NotFound => {
                Ok(Self::default())
            }
            Err(source) => Err(ConfigError::Read {
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// Parses and validates config text; `path` only names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|err| ConfigError::Parse {
            path: path.to_owned(),
            message: err.to_string().trim_end().replace('\n', "\n  "),
        })?;
        config.validate(path)?;
        Ok(config)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        self.validate_capture(path)?;
        self.validate_daemon(path)?;
        self.recorder
            .validate()
            .map_err(|(key, message)| ConfigError::Value {
                path: path.to_owned(),
                key: format!("recorder.{key}"),
                message,
            })?;
        self.history
            .validate()
            .and_then(|()| self.preserve.validate())
            .and_then(|()| crate::triggers::validate(&self.triggers))
            .map_err(|(key, message)| ConfigError::Value {
                path: path.to_owned(),
                key,
                message,
            })
    }

    fn validate_daemon(&self, path: &Path) -> Result<(), ConfigError> {
        let bad = |key: &str, message: String| ConfigError::Value {
            path: path.to_owned(),
            key: key.to_owned(),
            message,
        };
        let a = &self.api;
        if let Some(listen) = &a.listen
            && listen.parse::<std::net::SocketAddr>().is_err()
        {
            return Err(bad(
                "api.listen",
                format!("{listen:?} is not an address:port such as \"0.0.0.0:7443\""),
            ));
        }
        if a.socket.as_os_str().is_empty() {
            return Err(bad("api.socket", "must not be empty".into()));
        }
        if a.max_body_bytes == 0 {
            return Err(bad("api.max_body_bytes", "must be greater than 0".into()));
        }
        if a.request_timeout_secs == 0 {
            return Err(bad(
                "api.request_timeout_secs",
                "must be greater than 0".into(),
            ));
        }
        if a.rate_burst == 0 {
            return Err(bad("api.rate_burst", "must be greater than 0".into()));
        }
        if let Some((name, _)) = a.roles.iter().find(|(_, roles)| roles.is_empty()) {
            return Err(bad(
                &format!("api.roles.{name}"),
                "lists no role (trigger, read, admin); remove the entry instead".into(),
            ));
        }
        let d = &self.daemon;
        if !(d.max_profile_seconds.is_finite() && d.max_profile_seconds > 0.0) {
            return Err(bad(
                "daemon.max_profile_seconds",
                "must be a positive number".into(),
            ));
        }
        if !(-20..=19).contains(&d.worker_nice) {
            return Err(bad(
                "daemon.worker_nice",
                format!("{} is not in -20..=19", d.worker_nice),
            ));
        }
        if d.keep_jobs == 0 {
            return Err(bad("daemon.keep_jobs", "must be greater than 0".into()));
        }
        Ok(())
    }

    fn validate_capture(&self, path: &Path) -> Result<(), ConfigError> {
        let c = &self.capture;
        let bad = |key: &str, message: String| ConfigError::Value {
            path: path.to_owned(),
            key: format!("capture.{key}"),
            message,
        };
        if c.max_file_bytes == 0 {
            return Err(bad("max_file_bytes", "must be greater than 0".into()));
        }
        if c.max_total_bytes < c.max_file_bytes {
            return Err(bad(
                "max_total_bytes",
                format!(
                    "{} is less than max_file_bytes ({})",
                    c.max_total_bytes, c.max_file_bytes
                ),
            ));
        }
        if !(1..=19).contains(&c.zstd_level) {
            return Err(bad(
                "zstd_level",
                format!("{} is not in 1..=19", c.zstd_level),
            ));
        }
        if c.output_dir.as_os_str().is_empty() {
            return Err(bad("output_dir", "must not be empty".into()));
        }
        for (key, globs) in [
            ("configs", &c.configs),
            ("logs", &c.logs),
            ("exclude", &c.exclude),
        ] {
            for (i, g) in globs.iter().enumerate() {
                if let Err(err) = glob::Pattern::new(g) {
                    return Err(bad(
                        &format!("{key}[{i}]"),
                        format!("bad glob {g:?}: {err}"),
                    ));
                }
                if key != "exclude" && !g.starts_with('/') {
                    return Err(bad(
                        &format!("{key}[{i}]"),
                        format!("{g:?} is not an absolute path"),
                    ));
                }
            }
        }
        for (i, p) in c.redact.patterns.iter().enumerate() {
            if let Err(err) = regex::Regex::new(p) {
                return Err(bad(
                    &format!("redact.patterns[{i}]"),
                    format!("bad regular expression: {err}"),
                ));
            }
        }
        if c.redact.keys.iter().any(|k| k.trim().is_empty()) {
            return Err(bad("redact.keys", "contains an empty key".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.toml"))
    }

    #[test]
    fn empty_file_gives_defaults() {
        assert_eq!(parse("").unwrap(), Config::default());
        assert_eq!(parse("[capture]\n").unwrap(), Config::default());
    }

    #[test]
    fn issue_example_parses() {
        let c = parse(
            r#"
            [capture]
            output_dir  = "/var/lib/hindsight/evidence"
            signing_key = "/etc/hindsight/signing.key"
            configs     = ["/etc/hosts", "/etc/nginx/**/*.conf"]
            logs        = ["/var/log/syslog", "/var/log/app/*.log"]
            "#,
        )
        .unwrap();
        assert_eq!(c.capture.logs, ["/var/log/syslog", "/var/log/app/*.log"]);
        assert_eq!(c.capture.max_file_bytes, 256 * MIB);
    }

    #[test]
    fn unknown_key_is_named() {
        let err = parse("[capture]\nlogz = []\n").unwrap_err().to_string();
        assert!(err.contains("logz"), "{err}");
        assert!(err.contains("test.toml"), "{err}");
        let err = parse("[capture.redact]\nkeyz = []\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("keyz"), "{err}");
        let err = parse("[captur]\n").unwrap_err().to_string();
        assert!(err.contains("captur"), "{err}");
    }

    #[test]
    fn bad_values_are_named() {
        let err = parse("[capture]\nmax_file_bytes = \"big\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_file_bytes"), "{err}");
        let err = parse("[capture]\nmax_file_bytes = 0\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("capture.max_file_bytes"), "{err}");
        let err = parse("[capture]\nzstd_level = 40\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("capture.zstd_level"), "{err}");
        let err = parse("[capture]\nlogs = [\"var/log/x\"]\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("capture.logs[0]"), "{err}");
        let err = parse("[capture]\nconfigs = [\"/etc/[x\"]\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("capture.configs[0]"), "{err}");
        let err = parse("[capture.redact]\npatterns = [\"(\"]\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("capture.redact.patterns[0]"), "{err}");
    }

    #[test]
    fn api_example_parses() {
        let c = parse(
            r#"
            [api]
            socket = "/run/hindsight/hindsight.sock"
            listen = "0.0.0.0:7443"
            ca     = "/etc/hindsight/clients-ca.pem"
            cert   = "/etc/hindsight/server.pem"
            key    = "/etc/hindsight/server.key"
            [api.roles]
            "alice" = ["trigger", "read"]
            "#,
        )
        .unwrap();
        assert_eq!(c.api.listen.as_deref(), Some("0.0.0.0:7443"));
        assert_eq!(c.api.roles["alice"], [Role::Trigger, Role::Read]);
        assert_eq!(c.daemon, DaemonConfig::default());
    }

    #[test]
    fn bad_api_values_are_named() {
        let err = parse("[api]\nlisten = \"nowhere\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("api.listen"), "{err}");
        let err = parse("[api.roles]\nbob = [\"root\"]\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("root"), "{err}");
        let err = parse("[api.roles]\nbob = []\n").unwrap_err().to_string();
        assert!(err.contains("api.roles.bob"), "{err}");
        let err = parse("[daemon]\nqueue = 3\n").unwrap_err().to_string();
        assert!(err.contains("queue"), "{err}");
        let err = parse("[daemon]\nmax_profile_seconds = -1\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("daemon.max_profile_seconds"), "{err}");
    }

    #[test]
    fn missing_default_file_is_defaults_but_explicit_is_error() {
        let missing = Path::new("/nonexistent/hindsight.toml");
        assert_eq!(Config::load(missing, false).unwrap(), Config::default());
        let err = Config::load(missing, true).unwrap_err();
        assert!(format!("{err}").contains("/nonexistent/hindsight.toml"));
    }
}
