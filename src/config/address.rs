//! The addresses in a config: `listen` and `backends`, or the blog's part-3 keys
//! `listenPort`, `backendAddress` and `backendPort`. Each `"host:port"` is resolved once,
//! here, so a name such as `localhost` costs nothing per connection.

use std::net::{SocketAddr, ToSocketAddrs};

use super::validate::{Checker, PART3_KEYS, Raw};
use super::{Backend, ConfigError};

impl Checker<'_> {
    /// The listen address and backends, from `listen`/`backends` or the part-3 keys.
    pub(super) fn addresses(&mut self) -> Result<(SocketAddr, Vec<Backend>), ConfigError> {
        let part3 = PART3_KEYS.iter().find(|k| self.values.contains_key(**k));
        let modern = ["listen", "backends"]
            .into_iter()
            .find(|k| self.values.contains_key(*k));
        match (part3, modern) {
            (Some(old), Some(new)) => Err(self.error(
                old,
                format!(
                    "cannot be mixed with '{new}' (use listen/backends, or the part-3 keys \
                     listenPort/backendAddress/backendPort, not both)"
                ),
            )),
            (Some(_), None) => self.part3_addresses(),
            (None, _) => Ok((self.listen()?, self.backends()?)),
        }
    }

    fn listen(&mut self) -> Result<SocketAddr, ConfigError> {
        match self.values.get("listen") {
            None => Err(self.error("listen", "missing; add e.g. listen = \"127.0.0.1:8000\"")),
            Some(Raw::Str(text)) => {
                note_resolving("listen", text);
                resolve(text).map_err(|e| self.error("listen", e))
            }
            Some(other) => Err(self.error(
                "listen",
                format!("expected a \"host:port\" string, got {other}"),
            )),
        }
    }

    /// `stats`: a "host:port" string, or `None` if the file left it out (stats off).
    pub(super) fn stats(&mut self) -> Result<Option<SocketAddr>, ConfigError> {
        match self.values.get("stats") {
            None => {
                self.defaulted.push("stats");
                Ok(None)
            }
            Some(Raw::Str(text)) => resolve(text).map(Some).map_err(|e| self.error("stats", e)),
            Some(other) => Err(self.error(
                "stats",
                format!("expected a \"host:port\" string, got {other}"),
            )),
        }
    }

    fn backends(&mut self) -> Result<Vec<Backend>, ConfigError> {
        let expected = "expected a list of \"host:port\" strings";
        let items = match self.values.get("backends") {
            None => {
                return Err(self.error(
                    "backends",
                    "missing; add e.g. backends = { \"127.0.0.1:8888\" }",
                ));
            }
            Some(Raw::Table {
                items,
                only_list: true,
                ..
            }) if !items.is_empty() => items,
            Some(other) => return Err(self.error("backends", format!("{expected}, got {other}"))),
        };
        let mut backends = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let key = format!("backends[{}]", i + 1);
            let (name, weight) = self.weighted(&key, item)?;
            note_resolving(&key, name);
            let mut backend = backend(name).map_err(|e| self.error(&key, e))?;
            backend.weight = weight;
            backends.push(backend);
        }
        Ok(backends)
    }

    /// The part-3 form: `listenPort` (on 127.0.0.1), `backendAddress`, `backendPort`.
    fn part3_addresses(&mut self) -> Result<(SocketAddr, Vec<Backend>), ConfigError> {
        let listen_port = self.part3_value("listenPort")?;
        let host = self.part3_value("backendAddress")?;
        let backend_port = self.part3_value("backendPort")?;
        let listen = resolve(&format!("127.0.0.1:{listen_port}"))
            .map_err(|e| self.error("listenPort", e))?;
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host
        };
        let name = format!("{host}:{backend_port}");
        note_resolving("backendAddress", &name);
        let backend = backend(&name).map_err(|e| self.error("backendPort", e))?;
        Ok((listen, vec![backend]))
    }

    /// A part-3 key as text; like the C, numbers are accepted and turned into text.
    fn part3_value(&mut self, key: &'static str) -> Result<String, ConfigError> {
        match self.values.get(key) {
            Some(Raw::Str(text)) => Ok(text.trim().to_string()),
            Some(Raw::Number(n)) => Ok(n.to_string()),
            Some(other) => Err(self.error(key, format!("expected a string, got {other}"))),
            None => Err(self.error(
                key,
                "missing (the part-3 form needs listenPort, backendAddress and backendPort)",
            )),
        }
    }
}

/// Notes the lookup about to start, so that a name server that does not answer is named
/// in the time-limit error: `proxy.lua: backends[2]: resolving "db:5432" took more than…`.
fn note_resolving(key: &str, text: &str) {
    super::note_step(key, || format!("resolving \"{text}\""));
}

/// A backend from its `"host:port"` text; port 0 cannot be connected to.
fn backend(name: &str) -> Result<Backend, String> {
    let addr = resolve(name)?;
    if addr.port() == 0 {
        return Err(format!("\"{name}\": port 0 is not a valid backend port"));
    }
    Ok(Backend {
        name: name.to_string(),
        addr,
        weight: 1,
    })
}

/// Resolves `"host:port"` (`host` may be a name, an IPv4 or a `[bracketed]` IPv6 address)
/// to one address.
fn resolve(text: &str) -> Result<SocketAddr, String> {
    let shape = || format!("expected \"host:port\", e.g. \"127.0.0.1:8000\", got \"{text}\"");
    let (host, port) = text.rsplit_once(':').ok_or_else(shape)?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() {
        return Err(shape());
    }
    let port: u16 = port
        .parse()
        .map_err(|_| format!("\"{text}\": the port must be a whole number from 0 to 65535"))?;
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve \"{text}\": {e}"))?
        .collect();
    // A name can have several addresses (`localhost` is often ::1 and 127.0.0.1). Prefer
    // IPv4, so that `localhost:8888` reaches a backend listening on 127.0.0.1 only.
    let first_v4 = addrs.iter().find(|a| a.is_ipv4());
    first_v4
        .or(addrs.first())
        .copied()
        .ok_or_else(|| format!("cannot resolve \"{text}\": no addresses"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_host_port_text() {
        assert_eq!(resolve("127.0.0.1:80").unwrap().port(), 80);
        assert_eq!(resolve("[::1]:80").unwrap().port(), 80);
        assert!(resolve("localhost:80").unwrap().is_ipv4());
        assert!(
            resolve("nonsense")
                .unwrap_err()
                .contains("expected \"host:port\"")
        );
        assert!(resolve(":80").is_err());
        assert!(
            resolve("127.0.0.1:65536")
                .unwrap_err()
                .contains("the port must be")
        );
        assert!(backend("127.0.0.1:0").unwrap_err().contains("port 0"));
    }
}
