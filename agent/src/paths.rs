//! Every default filesystem path Hindsight uses, in one place, so packaging, docs and the
//! config defaults cannot drift apart.

/// The configuration file read when `--config` is not given.
pub const DEFAULT_CONFIG: &str = "/etc/hindsight/hindsight.toml";

/// Where `hindsight capture` writes evidence archives (`[capture] output_dir`).
pub const DEFAULT_EVIDENCE_DIR: &str = "/var/lib/hindsight/evidence";

/// The minisign secret key that signs evidence archives (`[capture] signing_key`).
pub const DEFAULT_SIGNING_KEY: &str = "/etc/hindsight/signing.key";

/// The public half written by `hindsight keygen` when `--public-key` is not given.
pub const DEFAULT_PUBLIC_KEY: &str = "/etc/hindsight/signing.pub";

/// The daemon's local control socket (`[api] socket`); systemd's RuntimeDirectory.
pub const DEFAULT_SOCKET: &str = "/run/hindsight/hindsight.sock";

/// CA bundle that API client certificates must chain to (`[api] ca`).
pub const DEFAULT_CLIENTS_CA: &str = "/etc/hindsight/clients-ca.pem";

/// The daemon's TLS certificate chain (`[api] cert`).
pub const DEFAULT_SERVER_CERT: &str = "/etc/hindsight/server.pem";

/// The daemon's TLS private key (`[api] key`).
pub const DEFAULT_SERVER_KEY: &str = "/etc/hindsight/server.key";

/// The daemon's append-only audit log (`[api] audit_log`); systemd's LogsDirectory.
pub const DEFAULT_AUDIT_LOG: &str = "/var/log/hindsight/audit.jsonl";

/// Profiles started through the API (`[daemon] profile_dir`); under StateDirectory.
pub const DEFAULT_PROFILE_DIR: &str = "/var/lib/hindsight/profiles";

/// The baseline library of `hindsight baseline` and `hindsight diff` (`--dir`).
pub const DEFAULT_BASELINE_DIR: &str = "/var/lib/hindsight/baselines";

/// procfs; collectors read processes, sockets and kernel state from here.
pub const PROC: &str = "/proc";

/// The kernel ring buffer, read without blocking.
pub const KMSG: &str = "/dev/kmsg";

/// Default log globs on a Debian host (`[capture] logs`).
pub const DEFAULT_LOGS: &[&str] = &[
    "/var/log/syslog",
    "/var/log/messages",
    "/var/log/kern.log",
    "/var/log/auth.log",
    "/var/log/dpkg.log",
    "/var/log/nginx/*.log",
    "/var/log/apache2/*.log",
    "/var/log/postgresql/*.log",
];

/// Default config globs on a Debian host (`[capture] configs`).
pub const DEFAULT_CONFIGS: &[&str] = &[
    "/etc/hosts",
    "/etc/hostname",
    "/etc/resolv.conf",
    "/etc/nsswitch.conf",
    "/etc/fstab",
    "/etc/os-release",
    "/etc/passwd",
    "/etc/group",
    "/etc/sysctl.conf",
    "/etc/sysctl.d/*.conf",
    "/etc/security/limits.conf",
    "/etc/ssh/sshd_config",
    "/etc/systemd/system/*.service",
    "/etc/nginx/**/*.conf",
    "/etc/hindsight/hindsight.toml",
];

/// Paths never captured, whatever the globs say (`[capture] exclude` adds to these).
pub const DEFAULT_EXCLUDES: &[&str] = &[
    "/etc/shadow",
    "/etc/shadow-",
    "/etc/gshadow",
    "/etc/gshadow-",
    "/etc/ssl/private/**",
    "/etc/ssh/ssh_host_*_key",
    "**/*.key",
    "**/id_rsa",
    "**/id_dsa",
    "**/id_ecdsa",
    "**/id_ed25519",
    "**/*.p12",
    "**/*.pfx",
    "**/*.keytab",
    "**/.pgpass",
    "**/.netrc",
];

/// Where `hindsight preserve` stages logs until the next capture (`[preserve]
/// staging_dir`); under StateDirectory.
pub const DEFAULT_STAGING_DIR: &str = "/var/lib/hindsight/staging";
