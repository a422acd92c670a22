//! Sockets: TCP, UDP and raw (v4 and v6) and unix sockets of every network namespace a
//! process is in, with state, queues, addresses and the owning processes (socket inode
//! -> /proc/PID/fd mapping, as `ss -p` does). Written as `sockets/sockets.json` and an
//! `ss -tunap`-like table, `sockets/ss.txt`.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;

use serde::Serialize;

use super::processes::numeric_entries;
use super::{Collector, Context, MemberMeta, Sink};
use crate::capture::archive::ArchiveError;

pub struct Sockets;

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Owner {
    pub pid: u32,
    pub comm: String,
    pub fd: u32,
}

#[derive(Debug, Serialize)]
pub struct Socket {
    /// Network namespace (`net:[inode]`).
    pub netns: String,
    /// tcp, tcp6, udp, udp6, raw, raw6, unix.
    pub proto: String,
    pub state: String,
    pub local: String,
    pub peer: String,
    pub recv_q: u64,
    pub send_q: u64,
    pub uid: Option<u32>,
    pub inode: u64,
    pub owners: Vec<Owner>,
}

/// Socket inode -> owning (pid, comm, fd), and one pid per network namespace.
fn scan_owners(proc: &Path) -> (HashMap<u64, Vec<Owner>>, BTreeMap<String, u32>) {
    let mut owners: HashMap<u64, Vec<Owner>> = HashMap::new();
    let mut netns = BTreeMap::new();
    for pid in numeric_entries(proc).unwrap_or_default() {
        let dir = proc.join(pid.to_string());
        if let Ok(ns) = std::fs::read_link(dir.join("ns/net")) {
            netns.entry(ns.display().to_string()).or_insert(pid);
        }
        let Ok(fds) = numeric_entries(&dir.join("fd")) else {
            continue;
        };
        let comm = std::fs::read_to_string(dir.join("comm"))
            .map(|c| c.trim_end().to_owned())
            .unwrap_or_default();
        for fd in fds {
            let Ok(target) = std::fs::read_link(dir.join("fd").join(fd.to_string())) else {
                continue;
            };
            let t = target.to_string_lossy();
            if let Some(inode) = t
                .strip_prefix("socket:[")
                .and_then(|s| s.strip_suffix(']'))
                .and_then(|s| s.parse().ok())
            {
                owners.entry(inode).or_default().push(Owner {
                    pid,
                    comm: comm.clone(),
                    fd,
                });
            }
        }
    }
    (owners, netns)
}

/// Parses /proc/net/{tcp,udp,raw}{,6}.
pub fn parse_inet(proto: &str, text: &str) -> Vec<Socket> {
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 10 {
            continue;
        }
        let (Some(local), Some(peer)) = (parse_addr(f[1]), parse_addr(f[2])) else {
            continue;
        };
        let st = u8::from_str_radix(f[3], 16).unwrap_or(0);
        let (tx, rx) = f[4].split_once(':').unwrap_or(("0", "0"));
        out.push(Socket {
            netns: String::new(),
            proto: proto.to_owned(),
            state: inet_state(proto, st).to_owned(),
            local,
            peer,
            send_q: u64::from_str_radix(tx, 16).unwrap_or(0),
            recv_q: u64::from_str_radix(rx, 16).unwrap_or(0),
            uid: f[7].parse().ok(),
            inode: f[9].parse().unwrap_or(0),
            owners: Vec::new(),
        });
    }
    out
}

/// `0100007F:1F90` -> `127.0.0.1:8080`; v6 as `[::1]:8080`. The kernel prints each
/// 32-bit word of the address in host (little-endian) order.
fn parse_addr(s: &str) -> Option<String> {
    let (addr, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    match addr.len() {
        8 => {
            let v = u32::from_str_radix(addr, 16).ok()?;
            Some(format!("{}:{port}", Ipv4Addr::from(v.to_le_bytes())))
        }
        32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                let w = u32::from_str_radix(&addr[i * 8..i * 8 + 8], 16).ok()?;
                bytes[i * 4..i * 4 + 4].copy_from_slice(&w.to_le_bytes());
            }
            let ip = Ipv6Addr::from(bytes);
            Some(match ip.to_ipv4_mapped() {
                Some(v4) => format!("[::ffff:{v4}]:{port}"),
                None => format!("[{ip}]:{port}"),
            })
        }
        _ => None,
    }
}

fn inet_state(proto: &str, st: u8) -> &'static str {
    if proto.starts_with("tcp") {
        // include/net/tcp_states.h
        match st {
            1 => "ESTAB",
            2 => "SYN-SENT",
            3 => "SYN-RECV",
            4 => "FIN-WAIT-1",
            5 => "FIN-WAIT-2",
            6 => "TIME-WAIT",
            7 => "UNCONN",
            8 => "CLOSE-WAIT",
            9 => "LAST-ACK",
            10 => "LISTEN",
            11 => "CLOSING",
            12 => "NEW-SYN-RECV",
            _ => "UNKNOWN",
        }
    } else {
        match st {
            1 => "ESTAB",
            7 => "UNCONN",
            _ => "UNKNOWN",
        }
    }
}

/// Parses /proc/net/unix: `Num RefCount Protocol Flags Type St Inode [Path]`.
pub fn parse_unix(text: &str) -> Vec<Socket> {
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 7 {
            continue;
        }
        let flags = u32::from_str_radix(f[3], 16).unwrap_or(0);
        let kind = match f[4] {
            "0001" => "u_str",
            "0002" => "u_dgr",
            "0005" => "u_seq",
            _ => "u_?",
        };
        let state = if flags & 0x10000 != 0 {
            "LISTEN"
        } else {
            match f[5] {
                "01" => "UNCONN",
                "02" => "CONNECTING",
                "03" => "ESTAB",
                "04" => "DISCONNECTING",
                _ => "UNKNOWN",
            }
        };
        out.push(Socket {
            netns: String::new(),
            proto: kind.to_owned(),
            state: state.to_owned(),
            local: f.get(7).map_or("*".to_owned(), |p| p.to_string()),
            peer: "*".to_owned(),
            recv_q: 0,
            send_q: 0,
            uid: None,
            inode: f[6].parse().unwrap_or(0),
            owners: Vec::new(),
        });
    }
    out
}

impl Collector for Sockets {
    fn name(&self) -> &'static str {
        "sockets"
    }

    fn collect(&self, ctx: &Context<'_>, sink: &mut dyn Sink) -> Result<(), ArchiveError> {
        let (owners, netns) = scan_owners(&ctx.proc);
        let mut sockets = Vec::new();
        for (ns, pid) in &netns {
            let net = ctx.proc.join(pid.to_string()).join("net");
            for proto in ["tcp", "tcp6", "udp", "udp6", "raw", "raw6", "unix"] {
                let path = net.join(proto);
                let text = match std::fs::read_to_string(&path) {
                    Ok(t) => t,
                    Err(err) => {
                        // IPv6 disabled, or the namespace vanished.
                        if err.kind() != std::io::ErrorKind::NotFound {
                            sink.skip(&path.display().to_string(), &err.to_string());
                        }
                        continue;
                    }
                };
                let parsed = if proto == "unix" {
                    parse_unix(&text)
                } else {
                    parse_inet(proto, &text)
                };
                for mut s in parsed {
                    s.netns = ns.clone();
                    if let Some(o) = owners.get(&s.inode) {
                        s.owners = o.clone();
                    }
                    sockets.push(s);
                }
            }
        }
        let json = serde_json::to_vec_pretty(&sockets).expect("sockets serialize");
        sink.add_bytes("sockets/sockets.json", &json, MemberMeta::default())?;
        sink.add_bytes(
            "sockets/ss.txt",
            render_table(&sockets).as_bytes(),
            MemberMeta::default(),
        )?;
        Ok(())
    }
}

/// An `ss -tunap`-like table (all namespaces; unix sockets last).
fn render_table(sockets: &[Socket]) -> String {
    let mut out = format!(
        "{:<6} {:<12} {:>7} {:>7} {:<46} {:<46} {:<16} Process\n",
        "Netid", "State", "Recv-Q", "Send-Q", "Local Address:Port", "Peer Address:Port", "Netns"
    );
    let mut sorted: Vec<&Socket> = sockets.iter().collect();
    sorted.sort_by_key(|s| s.proto.starts_with("u_"));
    for s in sorted {
        let users = if s.owners.is_empty() {
            String::new()
        } else {
            let list: Vec<String> = s
                .owners
                .iter()
                .map(|o| format!("(\"{}\",pid={},fd={})", o.comm, o.pid, o.fd))
                .collect();
            format!("users:({})", list.join(","))
        };
        let _ = writeln!(
            out,
            "{:<6} {:<12} {:>7} {:>7} {:<46} {:<46} {:<16} {}",
            s.proto, s.state, s.recv_q, s.send_q, s.local, s.peer, s.netns, users
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tcp_v4_and_v6() {
        let v4 = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:1F90 00000000:0000 0A 00000000:00000002 00:00000000 00000000     0        0 12345 1 0 100 0 0 10 0\n";
        let s = parse_inet("tcp", v4);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].local, "127.0.0.1:8080");
        assert_eq!(s[0].state, "LISTEN");
        assert_eq!(s[0].recv_q, 2);
        assert_eq!(s[0].inode, 12345);
        let v6 = "header\n   0: 00000000000000000000000001000000:0016 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 777 1\n";
        let s = parse_inet("tcp6", v6);
        assert_eq!(s[0].local, "[::1]:22");
    }

    #[test]
    fn parses_unix() {
        let t = "Num       RefCount Protocol Flags    Type St Inode Path\n0000: 00000002 00000000 00010000 0001 01 4242 /run/app.sock\n0000: 00000003 00000000 00000000 0002 03 4243\n";
        let s = parse_unix(t);
        assert_eq!(s[0].state, "LISTEN");
        assert_eq!(s[0].local, "/run/app.sock");
        assert_eq!(s[1].proto, "u_dgr");
        assert_eq!(s[1].local, "*");
    }
}
