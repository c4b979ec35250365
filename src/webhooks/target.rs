//! Where a webhook may be sent. A tenant names the URL, so without a check a
//! tenant could make the node call its own network (a metadata service, an
//! admin port): targets whose address is private, loopback, link-local or
//! otherwise not public are refused unless the server allows them
//! (`--webhook-allow-private`). The check runs when the URL is set and again
//! before every delivery, on the addresses the name resolves to then.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::error::Error;

/// Whether `ip` is an address a tenant's webhook may reach.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_public_v4(v4),
            None => is_public_v6(v6),
        },
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        // Shared address space (RFC 6598) and 192.0.0.0/24 (IETF protocol
        // assignments), benchmarking (198.18.0.0/15), reserved (240/4).
        || (a == 100 && (64..128).contains(&b))
        || (a == 192 && b == 0 && ip.octets()[2] == 0)
        || (a == 198 && (b == 18 || b == 19))
        || a >= 240)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        // Unique local (fc00::/7), link-local (fe80::/10), site-local
        // (fec0::/10, deprecated), documentation (2001:db8::/32), and the
        // NAT64 and 6to4 prefixes, which embed IPv4 addresses.
        || (first & 0xfe00) == 0xfc00
        || (first & 0xffc0) == 0xfe80
        || (first & 0xffc0) == 0xfec0
        || (first == 0x2001 && ip.segments()[1] == 0x0db8)
        || (first == 0x0064 && ip.segments()[1] == 0xff9b)
        || first == 0x2002)
}

/// Name resolution for webhook deliveries: the addresses a name has at the
/// moment of sending, refused when any is not public (so a name that
/// pointed somewhere public when the URL was set cannot be turned to the
/// node's own network afterwards).
pub struct PublicResolver {
    allow_private: bool,
}

impl PublicResolver {
    pub fn new(allow_private: bool) -> Self {
        Self { allow_private }
    }
}

impl reqwest::dns::Resolve for PublicResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((name.as_str(), 0)).await?.collect();
            if !allow_private && addrs.iter().any(|a| !is_public(a.ip())) {
                return Err("the webhook target resolves to a non-public address".into());
            }
            let addrs: reqwest::dns::Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}

/// The host and port of an http(s) URL (validated by the domain first).
pub fn host_port(url: &str) -> Option<(String, u16)> {
    let (scheme, rest) = url.split_once("://")?;
    let default = if scheme == "https" { 443 } else { 80 };
    let authority = rest.split(['/', '?', '#']).next()?;
    if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if after.is_empty() => default,
            None => return None,
        };
        return Some((host.to_string(), port));
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => Some((host.to_string(), port.parse().ok()?)),
        None => Some((authority.to_string(), default)),
    }
}

/// The addresses `url` resolves to, refused (422) when any is not public
/// and private targets are not allowed, or when it resolves to nothing.
pub async fn resolve(url: &str, allow_private: bool) -> Result<Vec<SocketAddr>, Error> {
    let (host, port) =
        host_port(url).ok_or_else(|| Error::validation("url", "must name a host and port"))?;
    let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|_| Error::validation("url", "its host does not resolve"))?
            .collect(),
    };
    if addrs.is_empty() {
        return Err(Error::validation("url", "its host does not resolve"));
    }
    if !allow_private && addrs.iter().any(|a| !is_public(a.ip())) {
        return Err(Error::validation(
            "url",
            "points to a private, loopback or link-local address; \
             the server refuses those unless started with --webhook-allow-private",
        ));
    }
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_and_special_ranges_are_not_public() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::7f00:1",
            "2002:7f00:1::",
        ] {
            assert!(!is_public(ip.parse().expect("ip")), "{ip}");
        }
        for ip in ["93.184.216.34", "1.1.1.1", "2606:4700:4700::1111"] {
            assert!(is_public(ip.parse().expect("ip")), "{ip}");
        }
    }

    #[test]
    fn hosts_and_ports_come_from_the_url() {
        assert_eq!(
            host_port("https://example.com/h"),
            Some(("example.com".into(), 443))
        );
        assert_eq!(
            host_port("http://example.com:8080?x"),
            Some(("example.com".into(), 8080))
        );
        assert_eq!(host_port("http://[::1]:9/"), Some(("::1".into(), 9)));
        assert_eq!(host_port("http://[::1]/"), Some(("::1".into(), 80)));
        assert_eq!(host_port("http://host:notaport/"), None);
    }

    #[tokio::test]
    async fn a_private_target_is_refused_unless_allowed() {
        assert!(resolve("http://127.0.0.1:9/", false).await.is_err());
        assert!(resolve("http://[::1]:9/", false).await.is_err());
        assert!(resolve("http://localhost:9/", false).await.is_err());
        let allowed = resolve("http://127.0.0.1:9/", true).await.expect("allowed");
        assert_eq!(allowed, vec!["127.0.0.1:9".parse().expect("addr")]);
    }
}
