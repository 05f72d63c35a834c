//! The HTTP client settings `prometheus:` and `alertmanager:` share: credentials and TLS,
//! read from their files so that no secret sits in the configuration itself.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::Validator;
use crate::common::http::{HttpAuth, HttpTls};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBasicAuth {
    username: String,
    password_file: PathBuf,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawHttpTls {
    ca_file: Option<PathBuf>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
}

/// Credentials for the client of `section`, read from their files.
pub(super) fn auth(
    section: &str,
    basic: Option<RawBasicAuth>,
    bearer_file: Option<PathBuf>,
    v: &mut Validator<'_>,
) -> Option<HttpAuth> {
    let mut secret = |key: String, path: &Path| {
        String::from_utf8_lossy(&v.read_file(&key, path))
            .trim()
            .to_owned()
    };
    match (basic, bearer_file) {
        (Some(_), Some(_)) => {
            v.push(
                format!("{section}.basic_auth"),
                format!("and {section}.bearer_token_file exclude each other"),
            );
            None
        }
        (Some(b), None) => {
            let password = secret(
                format!("{section}.basic_auth.password_file"),
                &b.password_file,
            );
            Some(HttpAuth::Basic {
                username: b.username,
                password,
            })
        }
        (None, Some(path)) => Some(HttpAuth::Bearer(secret(
            format!("{section}.bearer_token_file"),
            &path,
        ))),
        (None, None) => None,
    }
}

/// An extra CA and a client certificate for the client of `section`, read from their files.
pub(super) fn tls(section: &str, t: RawHttpTls, v: &mut Validator<'_>) -> HttpTls {
    let identity_pem = match (&t.cert_file, &t.key_file) {
        (Some(c), Some(k)) => {
            let mut pem = v.read_file(&format!("{section}.tls.cert_file"), c);
            pem.push(b'\n');
            pem.extend(v.read_file(&format!("{section}.tls.key_file"), k));
            Some(pem)
        }
        (None, None) => None,
        _ => {
            v.push(
                format!("{section}.tls"),
                "cert_file and key_file go together",
            );
            None
        }
    };
    HttpTls {
        ca_pem: t
            .ca_file
            .map(|p| v.read_file(&format!("{section}.tls.ca_file"), &p)),
        identity_pem,
    }
}
