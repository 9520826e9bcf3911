//! Where deliveries may go: public addresses only, unless the host allows
//! loopback (tests, a local receiver) or private networks explicitly.
//!
//! A merchant names the URL, so without this a webhook is a way to make the
//! server call into its own network (cloud metadata at 169.254.169.254, an
//! admin port on 127.0.0.1). The check runs on every address a name
//! resolves to, at each delivery (a name may resolve elsewhere later), in
//! the HTTP client's resolver, so the address checked is the address
//! connected to; IP literals are checked before the request; redirects are
//! not followed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Which kinds of address deliveries may go to besides public ones.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Destinations {
    loopback: bool,
    private: bool,
}

/// Why an address is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{address} is a {kind} address; deliveries go to public addresses unless the host allows {kind} ones")]
pub struct RefusedDestination {
    /// The address.
    pub address: IpAddr,
    /// `loopback`, `private`, `link-local`, `unspecified`, `multicast` or
    /// `broadcast`.
    pub kind: &'static str,
}

impl Destinations {
    /// Public addresses only.
    pub fn public_only() -> Self {
        Destinations::default()
    }

    /// Loopback (`127.0.0.0/8`, `::1`) too: a receiver on this machine.
    pub fn allow_loopback(mut self) -> Self {
        self.loopback = true;
        self
    }

    /// Private networks (`10/8`, `172.16/12`, `192.168/16`, `100.64/10`,
    /// `fc00::/7`) too: receivers inside the host's own network.
    pub fn allow_private(mut self) -> Self {
        self.private = true;
        self
    }

    /// Whether a delivery may go to `address`.
    ///
    /// # Errors
    /// [`RefusedDestination`] naming the kind of address. Link-local
    /// (`169.254/16`, `fe80::/10`: cloud metadata lives there), unspecified,
    /// multicast and broadcast addresses are always refused.
    pub fn check(&self, address: IpAddr) -> Result<(), RefusedDestination> {
        let refuse = |kind| Err(RefusedDestination { address, kind });
        let address = match address {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, IpAddr::V4),
            v4 => v4,
        };
        match kind_of(address) {
            None => Ok(()),
            Some("loopback") if self.loopback => Ok(()),
            Some("private") if self.private => Ok(()),
            Some(kind) => refuse(kind),
        }
    }
}

fn kind_of(address: IpAddr) -> Option<&'static str> {
    match address {
        IpAddr::V4(v4) => kind_of_v4(v4),
        IpAddr::V6(v6) => kind_of_v6(v6),
    }
}

fn kind_of_v4(v4: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = v4.octets();
    if v4.is_loopback() {
        Some("loopback")
    } else if v4.is_private() || (a == 100 && (64..128).contains(&b)) {
        Some("private")
    } else if v4.is_link_local() {
        Some("link-local")
    } else if v4.is_unspecified() || a == 0 {
        Some("unspecified")
    } else if v4.is_multicast() {
        Some("multicast")
    } else if v4.is_broadcast() {
        Some("broadcast")
    } else {
        None
    }
}

fn kind_of_v6(v6: Ipv6Addr) -> Option<&'static str> {
    let first = v6.segments()[0];
    if v6.is_loopback() {
        Some("loopback")
    } else if first & 0xfe00 == 0xfc00 {
        Some("private")
    } else if first & 0xffc0 == 0xfe80 {
        Some("link-local")
    } else if v6.is_unspecified() {
        Some("unspecified")
    } else if v6.is_multicast() {
        Some("multicast")
    } else {
        None
    }
}

/// The HTTP client's resolver: the system's, keeping only the addresses
/// [`Destinations`] allows.
#[derive(Debug)]
pub(super) struct CheckedResolver {
    pub(super) allowed: Destinations,
}

impl Resolve for CheckedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allowed = self.allowed;
        Box::pin(async move {
            let found = tokio::net::lookup_host((name.as_str(), 0)).await?;
            let mut refused = None;
            let kept: Vec<SocketAddr> = found
                .filter(|address| match allowed.check(address.ip()) {
                    Ok(()) => true,
                    Err(err) => {
                        refused = Some(err);
                        false
                    }
                })
                .collect();
            if kept.is_empty() {
                let err: Box<dyn std::error::Error + Send + Sync> = match refused {
                    Some(refused) => Box::new(refused),
                    None => format!("{} resolves to no address", name.as_str()).into(),
                };
                return Err(err);
            }
            let addrs: Addrs = Box::new(kept.into_iter());
            Ok(addrs)
        })
    }
}

impl CheckedResolver {
    pub(super) fn shared(allowed: Destinations) -> Arc<Self> {
        Arc::new(CheckedResolver { allowed })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_addresses_pass_unless_allowed() {
        let public = Destinations::public_only();
        for ok in [
            "93.184.216.34",
            "2606:2800:220:1:248:1893:25c8:1946",
            "8.8.8.8",
        ] {
            assert!(public.check(ok.parse().unwrap()).is_ok(), "{ok}");
        }
        for (bad, kind) in [
            ("127.0.0.1", "loopback"),
            ("::1", "loopback"),
            ("::ffff:127.0.0.1", "loopback"),
            ("10.1.2.3", "private"),
            ("172.16.0.1", "private"),
            ("192.168.1.1", "private"),
            ("100.64.0.1", "private"),
            ("fd00::1", "private"),
            ("169.254.169.254", "link-local"),
            ("fe80::1", "link-local"),
            ("0.0.0.0", "unspecified"),
            ("::", "unspecified"),
            ("224.0.0.1", "multicast"),
            ("255.255.255.255", "broadcast"),
        ] {
            let err = public.check(bad.parse().unwrap()).unwrap_err();
            assert_eq!(err.kind, kind, "{bad}");
        }
        let local = Destinations::public_only().allow_loopback();
        assert!(local.check("127.0.0.1".parse().unwrap()).is_ok());
        assert!(local.check("10.0.0.1".parse().unwrap()).is_err());
        assert!(local.check("169.254.169.254".parse().unwrap()).is_err());
        let private = Destinations::public_only().allow_private();
        assert!(private.check("10.0.0.1".parse().unwrap()).is_ok());
        assert!(private.check("127.0.0.1".parse().unwrap()).is_err());
    }
}
