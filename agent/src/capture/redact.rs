//! Secret redaction: turns config text and environment variables into text that is safe
//! to ship, and counts what it replaced so the manifest can say how many redactions each
//! member had (never what they were).

use regex::{Captures, Regex};

use crate::config::RedactConfig;

/// What replaces a secret.
pub const MARK: &str = "[REDACTED]";

/// Compiled redaction rules.
#[derive(Debug)]
pub struct Redactor {
    /// `key = value`, `key: value`, `"key": "value"`, `export KEY=value`, `key => value`
    /// where the key contains a secret-like fragment.
    key_value: Regex,
    /// Secret-like key names, for environment variables.
    key_name: Regex,
    /// A whole PEM private-key block.
    pem: Regex,
    /// The password of `scheme://user:password@host`.
    url_password: Regex,
    /// AWS access key ids, wherever they appear.
    aws_key_id: Regex,
    extra: Vec<Regex>,
}

/// Redacted text and how many secrets were replaced.
#[derive(Debug, PartialEq, Eq)]
pub struct Redacted {
    pub text: String,
    pub count: u32,
}

impl Redactor {
    /// Builds the rules. Patterns were validated with the config; an invalid one here is
    /// a bug, reported as the error string.
    pub fn new(config: &RedactConfig) -> Result<Self, regex::Error> {
        let keys = config
            .keys
            .iter()
            .map(|k| regex::escape(k.trim()))
            .collect::<Vec<_>>()
            .join("|");
        let key_name = format!(r"[A-Za-z0-9_.\-]*(?:{keys})[A-Za-z0-9_.\-]*");
        Ok(Self {
            key_value: Regex::new(&format!(
                r#"(?im)^(?P<pre>[^\n]*?["']?{key_name}["']?[ \t]*(?:=>|=|:)[ \t]*)(?P<val>[^\n]*?)(?P<post>[,;]?[ \t]*)$"#
            ))?,
            key_name: Regex::new(&format!("(?i)^{key_name}$"))?,
            pem: Regex::new(
                r"(?s)-----BEGIN (?P<kind>[A-Z0-9 ]*PRIVATE KEY)-----.*?(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|\z)",
            )?,
            url_password: Regex::new(
                r"(?P<pre>[A-Za-z][A-Za-z0-9+.\-]*://[^/\s:@]+:)(?P<pw>[^@\s/]+)@",
            )?,
            aws_key_id: Regex::new(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b")?,
            extra: config
                .patterns
                .iter()
                .map(|p| Regex::new(p))
                .collect::<Result<_, _>>()?,
        })
    }

    /// Redacts config-file text.
    pub fn redact_text(&self, text: &str) -> Redacted {
        let mut count = 0u32;
        let text = self.pem.replace_all(text, |c: &Captures| {
            count += 1;
            format!(
                "-----BEGIN {kind}-----\n{MARK}\n-----END {kind}-----",
                kind = &c["kind"]
            )
        });
        let text = self.key_value.replace_all(&text, |c: &Captures| {
            let val = &c["val"];
            if val.is_empty() || val.contains(MARK) {
                return c[0].to_string();
            }
            count += 1;
            format!("{}{}{}", &c["pre"], quote_like(val), &c["post"])
        });
        let text = self.common(&text, &mut count);
        Redacted { text, count }
    }

    /// Redacts one `KEY=value` environment entry.
    pub fn redact_env(&self, entry: &str) -> Redacted {
        let mut count = 0;
        if let Some((key, value)) = entry.split_once('=')
            && self.key_name.is_match(key)
            && !value.is_empty()
        {
            return Redacted {
                text: format!("{key}={MARK}"),
                count: 1,
            };
        }
        let text = self.common(entry, &mut count);
        Redacted { text, count }
    }

    /// Redacts a command line argument by argument: `--password=x` and `password=x`
    /// keep their key, the argument after a bare secret-named flag (`--token x`) is
    /// replaced whole, and the rules that apply anywhere (URL passwords, AWS key ids,
    /// `patterns`) apply to every argument.
    pub fn redact_argv(&self, argv: &[String]) -> (Vec<String>, u32) {
        let mut count = 0;
        let mut out = Vec::with_capacity(argv.len());
        let mut secret_next = false;
        for arg in argv {
            if std::mem::take(&mut secret_next) && !arg.starts_with('-') {
                count += 1;
                out.push(MARK.to_owned());
                continue;
            }
            let key = arg.trim_start_matches('-');
            if let Some((k, value)) = key.split_once('=')
                && self.key_name.is_match(k)
                && !value.is_empty()
            {
                count += 1;
                out.push(format!("{}={MARK}", &arg[..arg.len() - value.len() - 1]));
                continue;
            }
            if arg.starts_with('-') && !key.contains('=') && self.key_name.is_match(key) {
                secret_next = true;
            }
            let r = self.redact_text(arg);
            count += r.count;
            out.push(r.text);
        }
        (out, count)
    }

    /// Rules that apply anywhere in any text.
    fn common(&self, text: &str, count: &mut u32) -> String {
        let text = self.url_password.replace_all(text, |c: &Captures| {
            *count += 1;
            format!("{}{MARK}@", &c["pre"])
        });
        let mut text = self
            .aws_key_id
            .replace_all(&text, |_: &Captures| {
                *count += 1;
                MARK
            })
            .into_owned();
        for re in &self.extra {
            text = re
                .replace_all(&text, |_: &Captures| {
                    *count += 1;
                    MARK
                })
                .into_owned();
        }
        text
    }
}

/// Keeps the quoting of a value so the redacted file still parses: `"x"` -> `"[REDACTED]"`.
fn quote_like(val: &str) -> String {
    for q in ['"', '\''] {
        if val.len() >= 2 && val.starts_with(q) && val.ends_with(q) {
            return format!("{q}{MARK}{q}");
        }
    }
    MARK.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv_secrets_are_redacted_argument_by_argument() {
        let r = Redactor::new(&RedactConfig::default()).unwrap();
        let argv: Vec<String> = [
            "mysql",
            "--password=hunter2-XYZ",
            "--api-token",
            "t0ps3cret",
            "postgres://bob:pw123@db/x",
            "--verbose",
            "plain",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let (out, count) = r.redact_argv(&argv);
        assert_eq!(
            out,
            [
                "mysql",
                "--password=[REDACTED]",
                "--api-token",
                "[REDACTED]",
                "postgres://bob:[REDACTED]@db/x",
                "--verbose",
                "plain"
            ]
        );
        assert_eq!(count, 3);
    }

    fn redactor() -> Redactor {
        Redactor::new(&RedactConfig::default()).unwrap()
    }

    #[test]
    fn key_value_formats() {
        let r = redactor();
        let input = "\
[db]
host = db.internal
password = hunter2
api_key: sk-live-abcdef
  \"token\": \"tok-123\",
export AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG
'client_secret' => 'cs-999';
DB_PASSWD=pw1
";
        let out = r.redact_text(input);
        for secret in [
            "hunter2",
            "sk-live-abcdef",
            "tok-123",
            "wJalrXUtnFEMI",
            "cs-999",
            "pw1",
        ] {
            assert!(
                !out.text.contains(secret),
                "{secret} left in:\n{}",
                out.text
            );
        }
        assert!(out.text.contains("host = db.internal"), "{}", out.text);
        assert!(out.text.contains("password = [REDACTED]"), "{}", out.text);
        assert!(
            out.text.contains("\"token\": \"[REDACTED]\","),
            "{}",
            out.text
        );
        assert!(out.text.contains("'client_secret' => '[REDACTED]';"));
        assert_eq!(out.count, 6);
    }

    #[test]
    fn pem_url_and_aws_key_id() {
        let r = redactor();
        let input = "\
url = postgres://app:s3cretpw@db:5432/pay
id AKIAIOSFODNN7EXAMPLE
-----BEGIN RSA PRIVATE KEY-----
MIIEowIBAAKCAQEAtopsecretbody
-----END RSA PRIVATE KEY-----
-----BEGIN CERTIFICATE-----
MIIcertbody
-----END CERTIFICATE-----
";
        let out = r.redact_text(input);
        assert!(!out.text.contains("s3cretpw"), "{}", out.text);
        assert!(out.text.contains("postgres://app:[REDACTED]@db:5432/pay"));
        assert!(!out.text.contains("AKIAIOSFODNN7EXAMPLE"));
        assert!(!out.text.contains("topsecretbody"));
        assert!(
            out.text
                .contains("-----BEGIN RSA PRIVATE KEY-----\n[REDACTED]\n")
        );
        assert!(out.text.contains("MIIcertbody"), "certificates are public");
        assert_eq!(out.count, 3);
    }

    #[test]
    fn unterminated_pem_is_redacted_to_the_end() {
        let out = redactor().redact_text("-----BEGIN PRIVATE KEY-----\nabcdef\n");
        assert!(!out.text.contains("abcdef"));
        assert_eq!(out.count, 1);
    }

    #[test]
    fn clean_text_is_unchanged() {
        let input = "server {\n  listen 80;\n  server_name example.com;\n}\n";
        let out = redactor().redact_text(input);
        assert_eq!(out.text, input);
        assert_eq!(out.count, 0);
    }

    #[test]
    fn environment() {
        let r = redactor();
        assert_eq!(
            r.redact_env("GITHUB_TOKEN=ghp_x").text,
            "GITHUB_TOKEN=[REDACTED]"
        );
        assert_eq!(r.redact_env("PATH=/usr/bin").count, 0);
        let out = r.redact_env("DATABASE_URL=mysql://u:pw@h/db");
        assert_eq!(out.text, "DATABASE_URL=mysql://u:[REDACTED]@h/db");
        assert_eq!(out.count, 1);
    }

    #[test]
    fn extra_patterns() {
        let cfg = RedactConfig {
            patterns: vec![r"card=\d{16}".into()],
            ..RedactConfig::default()
        };
        let out = Redactor::new(&cfg)
            .unwrap()
            .redact_text("x card=1234567812345678 y");
        assert_eq!(out.text, "x [REDACTED] y");
        assert_eq!(out.count, 1);
    }
}
