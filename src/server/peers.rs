//! `peer_id` and `peers` as the engines use them: where a cancel for another instance's key
//! goes, and over what.

use std::collections::HashMap;
use std::sync::Arc;

use super::StartError;
use crate::backend::cancel::{CancelAddr, CancelTls, Peer};
use crate::config::{self, BackendSslMode, Config, Listen, ListenHost, PeerConfig};
use crate::engine::Peering;
use crate::tls;

/// The peering of `config`: its id and the other instances (its own entry left out).
pub(super) fn peering(config: &Config) -> Result<Peering, StartError> {
    let mut peers = HashMap::new();
    for (key, peer) in &config.peers {
        let Some(id) = config::parse_peer_id(key) else {
            return Err(StartError::Invalid(format!("peers.{key}: not a peer id")));
        };
        if Some(id) == config.peer_id {
            continue;
        }
        let peer = build(id, peer).map_err(|e| StartError::Invalid(format!("peers.{key}: {e}")))?;
        peers.insert(id, Arc::new(peer));
    }
    Ok(Peering {
        id: config.peer_id,
        peers,
    })
}

fn build(id: u16, peer: &PeerConfig) -> Result<Peer, tls::TlsError> {
    let (addr, host) = match &peer.address {
        Listen::Unix(path) => (CancelAddr::Unix(path.as_path().into()), None),
        Listen::Tcp(a) => {
            let host = match &a.host {
                // ":6432": this host.
                ListenHost::All => "localhost".to_owned(),
                ListenHost::Ip(ip) => ip.to_string(),
                ListenHost::Name(name) => name.clone(),
            };
            (CancelAddr::Host(host.as_str().into(), a.port), Some(host))
        }
    };
    let verify = match peer.sslmode {
        BackendSslMode::Disable | BackendSslMode::Allow => None,
        BackendSslMode::Prefer | BackendSslMode::Require => Some(tls::Verify::Nothing),
        BackendSslMode::VerifyCa => Some(tls::Verify::Chain),
        BackendSslMode::VerifyFull => Some(tls::Verify::ChainAndName),
    };
    let tls = match (verify, host) {
        (Some(verify), Some(host)) => {
            let source = tls::BackendTlsSource {
                root_cert: peer
                    .sslrootcert
                    .as_ref()
                    .map(|p| p.to_string_lossy().into_owned()),
                client_cert: None,
                client_key: None,
                key_password: None,
            };
            Some(CancelTls {
                config: tls::backend_client_config(verify, &source)?,
                name: tls::server_name(&host)?,
                required: peer.sslmode != BackendSslMode::Prefer,
            })
        }
        // No TLS over a unix socket (validation refuses the modes that need it).
        _ => None,
    };
    Ok(Peer { id, addr, tls })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> Config {
        let base = r#"{"databases": {"db": {"users": [{"username": {"insecure_value": "u"},
            "password": {"insecure_value": "p"}}], "backend": {"host": "127.0.0.1",
            "database": "db", "pool_max_conns": 1}}}}"#;
        let mut v: serde_json::Value = serde_json::from_str(base).unwrap();
        let extra: serde_json::Value = serde_json::from_str(json).unwrap();
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        Config::from_value(v).unwrap()
    }

    #[test]
    fn own_entry_is_left_out_and_addresses_are_kept_for_the_delivering_thread() {
        let c = config(
            r#"{"peer_id": 2, "peers": {"1": {"address": "10.0.0.1:6432", "sslmode": "disable"},
                "2": {"address": "10.0.0.2:6432"}, "3": {"address": "/run/pglink/.s.PGSQL.6432"},
                "4": {"address": ":6433", "sslmode": "require"}}}"#,
        );
        let p = peering(&c).unwrap();
        assert_eq!(p.id, Some(2));
        let mut ids: Vec<u16> = p.peers.keys().copied().collect();
        ids.sort_unstable();
        assert_eq!(ids, [1, 3, 4]);
        assert_eq!(p.peers[&1].addr, CancelAddr::Host("10.0.0.1".into(), 6432));
        assert!(p.peers[&1].tls.is_none());
        assert!(matches!(p.peers[&3].addr, CancelAddr::Unix(_)));
        assert!(p.peers[&3].tls.is_none(), "no TLS over a unix socket");
        assert_eq!(p.peers[&4].addr, CancelAddr::Host("localhost".into(), 6433));
        assert!(p.peers[&4].tls.as_ref().is_some_and(|t| t.required));
    }

    #[test]
    fn no_peer_id_means_no_peering() {
        let p = peering(&config("{}")).unwrap();
        assert_eq!(p, Peering::default());
    }
}
