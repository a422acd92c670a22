//! systemd's notify protocol (sd_notify(3)): one datagram to $NOTIFY_SOCKET, such as
//! `READY=1`. Hand-written: it is ten lines, and a crate would add nothing but a name.

use std::os::linux::net::SocketAddrExt as _;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Sends `state` (e.g. "READY=1\nSTATUS=listening") when run by systemd; does nothing
/// otherwise. Failures are logged, never fatal.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let bytes = path.as_encoded_bytes();
    let addr = match bytes.strip_prefix(b"@") {
        Some(abstract_name) => SocketAddr::from_abstract_name(abstract_name),
        None => SocketAddr::from_pathname(&path),
    };
    let sent = addr.and_then(|addr| UnixDatagram::unbound()?.send_to_addr(state.as_bytes(), &addr));
    if let Err(err) = sent {
        tracing::warn!("cannot notify systemd ({state:?}): {err}");
    }
}
