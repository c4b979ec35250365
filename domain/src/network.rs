//! A key's IP allow-list: the networks a request must come from to use the key.
//!
//! The list is client input that is stored in events and checked on every
//! verification of a restricted key, so it is validated strictly once (family,
//! prefix length, no host bits, no octal-looking octets) and kept in one canonical
//! form: sorted and deduplicated, IPv4-mapped IPv6 networks stored as the IPv4
//! networks they stand for. Two lists that allow the same entries then compare and
//! serialize equally, an update that changes nothing can be recognised as such, and
//! the check itself is a plain scan that needs no allocation.

use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net};
use serde::{Deserialize, Serialize};

use crate::error::DomainError;

/// Most networks one key's allow-list may hold.
pub const MAX_ALLOWED_IPS: usize = 50;

/// Longest entry, in bytes. The longest valid one
/// (`ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255/128`) has 49; the bound keeps
/// parsing cheap whatever a client sends.
pub const MAX_ALLOWED_IP_LEN: usize = 64;

/// The networks a key may be used from; empty means any address.
///
/// Canonical form: sorted, deduplicated networks, each without host bits, with
/// IPv4-mapped IPv6 networks of prefix length 96 or more stored as IPv4 (so they
/// match IPv4 clients). Serialises as a JSON array of strings (`"10.0.0.0/8"`,
/// `"2001:db8::/32"`, a single address as `"203.0.113.7/32"`).
///
/// Deserialising validates like [`AllowedIps::parse`]: an allow-list restricts
/// access, so a stored value that does not parse must fail the replay loudly
/// rather than read back as "any address".
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(try_from = "Vec<String>", into = "Vec<String>")]
pub struct AllowedIps(Box<[IpNet]>);

impl AllowedIps {
    /// Validates client input and brings it to the canonical form.
    ///
    /// Each entry is a CIDR (`"10.0.0.0/8"`, `"2001:db8::/32"`) or a plain address
    /// (`"203.0.113.7"` is `/32`, `"::1"` is `/128`). More than
    /// [`MAX_ALLOWED_IPS`] entries are rejected before deduplication. A CIDR with
    /// host bits set is rejected rather than truncated: `10.0.0.1/8` more likely
    /// means a mistake than the whole of `10.0.0.0/8`. Errors are validation errors
    /// on `allowed_ips` that name the offending index and never echo the entry.
    pub fn parse(list: Vec<String>) -> Result<Self, DomainError> {
        if list.len() > MAX_ALLOWED_IPS {
            return Err(DomainError::validation(
                "allowed_ips",
                format!("at most {MAX_ALLOWED_IPS} addresses or networks are allowed"),
            ));
        }
        let mut networks = Vec::with_capacity(list.len());
        for (index, entry) in list.iter().enumerate() {
            let network = parse_entry(entry).map_err(|problem| {
                DomainError::validation("allowed_ips", format!("entry {index} {problem}"))
            })?;
            networks.push(unmapped(network));
        }
        networks.sort_unstable();
        networks.dedup();
        Ok(AllowedIps(networks.into_boxed_slice()))
    }

    /// True when the list restricts nothing (any address may use the key).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How many networks the list holds, after deduplication.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether a request from `ip` may use the key: always when the list is empty,
    /// else when some network contains it.
    ///
    /// An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, how a dual-stack socket
    /// reports an IPv4 peer) is checked as the IPv4 address `a.b.c.d`, matching the
    /// stored form of mapped networks. So an IPv6 network of prefix length under 96
    /// (`::/0` included) never admits an IPv4 client: it names IPv6 space only.
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.is_empty() || self.0.iter().any(|network| network.contains(&ip))
    }

    /// The networks in canonical form and order, as strings that parse back to an
    /// equal list.
    pub fn to_strings(&self) -> Vec<String> {
        self.0.iter().map(ToString::to_string).collect()
    }

    /// The networks in canonical order.
    pub fn iter(&self) -> impl Iterator<Item = &IpNet> {
        self.0.iter()
    }
}

impl TryFrom<Vec<String>> for AllowedIps {
    type Error = DomainError;

    fn try_from(list: Vec<String>) -> Result<Self, Self::Error> {
        Self::parse(list)
    }
}

impl From<AllowedIps> for Vec<String> {
    fn from(allowed: AllowedIps) -> Self {
        allowed.to_strings()
    }
}

/// Parses one entry, or says what is wrong with it, phrased to follow "entry N".
///
/// Address and prefix length are split and parsed here rather than by
/// `IpNet::from_str`, whose IPv4 parser takes `010.0.0.0/8` as `10.0.0.0/8`: tools
/// that read such octets as octal would mean `8.0.0.0/8`, so, like
/// `std::net::IpAddr`, we accept neither reading. The prefix length is plain
/// decimal for the same reason (no sign, no leading zero).
fn parse_entry(entry: &str) -> Result<IpNet, String> {
    const UNPARSABLE: &str = "is not an IPv4 or IPv6 address or CIDR";
    if entry.len() > MAX_ALLOWED_IP_LEN {
        return Err(format!("is longer than {MAX_ALLOWED_IP_LEN} bytes"));
    }
    let (address, prefix_len) = match entry.split_once('/') {
        Some((address, prefix_len)) => (address, Some(prefix_len)),
        None => (entry, None),
    };
    let address: IpAddr = address.parse().map_err(|_| UNPARSABLE.to_owned())?;
    let Some(prefix_len) = prefix_len else {
        return Ok(IpNet::from(address));
    };
    let prefix_len = decimal_prefix_len(prefix_len).ok_or_else(|| UNPARSABLE.to_owned())?;
    let network = IpNet::new(address, prefix_len).map_err(|_| {
        let (max, family) = match address {
            IpAddr::V4(_) => (32, "IPv4"),
            IpAddr::V6(_) => (128, "IPv6"),
        };
        format!("has a prefix length over {max}, the most for {family}")
    })?;
    let truncated = network.trunc();
    if truncated != network {
        // The suggestion is rendered from the parsed value, not the client's text.
        return Err(format!(
            "has host bits set: write it as its network, {truncated}"
        ));
    }
    Ok(network)
}

/// A prefix length of one to three decimal digits with no leading zero.
fn decimal_prefix_len(text: &str) -> Option<u8> {
    let plain = !text.is_empty()
        && text.len() <= 3
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    if plain {
        text.parse().ok()
    } else {
        None
    }
}

/// An IPv6 network inside `::ffff:0:0/96` as the IPv4 network it stands for, so it
/// matches the IPv4 clients [`AllowedIps::allows`] sees; any other network as is.
fn unmapped(network: IpNet) -> IpNet {
    match network {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => Ipv4Net::new(v4, v6.prefix_len() - 96).map_or(network, IpNet::V4),
            None => network,
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    fn allowed(list: &[&str]) -> AllowedIps {
        AllowedIps::parse(strings(list)).expect("test networks are valid")
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("test addresses are valid")
    }

    fn rejection(list: Vec<String>) -> String {
        match AllowedIps::parse(list) {
            Err(DomainError::Validation {
                field: "allowed_ips",
                message,
            }) => message,
            other => panic!("expected an allowed_ips validation error, got {other:?}"),
        }
    }

    #[test]
    fn an_empty_list_allows_any_address() {
        let any = AllowedIps::parse(Vec::new()).expect("empty is valid");
        assert!(any.is_empty());
        assert_eq!(any.len(), 0);
        assert_eq!(any, AllowedIps::default());
        for address in [
            "0.0.0.0",
            "203.0.113.7",
            "::",
            "2001:db8::1",
            "::ffff:1.2.3.4",
        ] {
            assert!(any.allows(ip(address)), "{address}");
        }
    }

    #[test]
    fn ipv4_networks_contain_exactly_their_addresses() {
        let list = allowed(&["10.0.0.0/8", "192.168.1.0/24"]);
        assert!(list.allows(ip("10.0.0.0")));
        assert!(list.allows(ip("10.255.255.255")));
        assert!(list.allows(ip("192.168.1.200")));
        assert!(!list.allows(ip("9.255.255.255")));
        assert!(!list.allows(ip("11.0.0.0")));
        assert!(!list.allows(ip("192.168.2.1")));
        assert!(
            !list.allows(ip("::a00:1")),
            "IPv6 ::10.0.0.1 is not 10.0.0.1"
        );
    }

    #[test]
    fn ipv6_networks_contain_exactly_their_addresses() {
        let list = allowed(&["2001:db8::/32", "fe80::/10"]);
        assert!(list.allows(ip("2001:db8::")));
        assert!(list.allows(ip("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff")));
        assert!(list.allows(ip("febf::1")));
        assert!(!list.allows(ip("2001:db9::")));
        assert!(!list.allows(ip("fec0::1")));
        assert!(
            !list.allows(ip("32.1.13.184")),
            "the IPv4 reading of 2001:db8"
        );
    }

    #[test]
    fn a_plain_address_is_a_single_host_network() {
        let list = allowed(&["203.0.113.7", "::1"]);
        assert_eq!(list.to_strings(), strings(&["203.0.113.7/32", "::1/128"]));
        assert_eq!(list, allowed(&["203.0.113.7/32", "::1/128"]));
        assert!(list.allows(ip("203.0.113.7")));
        assert!(list.allows(ip("::1")));
        assert!(!list.allows(ip("203.0.113.8")));
        assert!(!list.allows(ip("203.0.113.6")));
        assert!(!list.allows(ip("::2")));
        assert!(!list.allows(ip("127.0.0.1")), "::1 is not IPv4 loopback");
    }

    #[test]
    fn full_length_prefixes_are_single_hosts() {
        let list = allowed(&["198.51.100.1/32", "2001:db8::5/128"]);
        assert!(list.allows(ip("198.51.100.1")));
        assert!(!list.allows(ip("198.51.100.0")));
        assert!(list.allows(ip("2001:db8::5")));
        assert!(!list.allows(ip("2001:db8::4")));
    }

    #[test]
    fn slash_zero_allows_the_whole_of_its_family_only() {
        let v4 = allowed(&["0.0.0.0/0"]);
        assert!(v4.allows(ip("0.0.0.0")));
        assert!(v4.allows(ip("255.255.255.255")));
        assert!(v4.allows(ip("::ffff:8.8.8.8")), "a mapped client is IPv4");
        assert!(!v4.allows(ip("2001:db8::1")));

        let v6 = allowed(&["::/0"]);
        assert!(v6.allows(ip("::")));
        assert!(v6.allows(ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")));
        assert!(!v6.allows(ip("8.8.8.8")));
        assert!(!v6.allows(ip("::ffff:8.8.8.8")), "a mapped client is IPv4");
    }

    #[test]
    fn mapped_ipv6_clients_are_checked_as_ipv4() {
        let list = allowed(&["10.0.0.0/8", "203.0.113.7"]);
        assert!(list.allows(ip("::ffff:10.1.2.3")));
        assert!(list.allows(ip("::ffff:203.0.113.7")));
        assert!(!list.allows(ip("::ffff:11.0.0.1")));
        assert!(!list.allows(ip("::ffff:203.0.113.8")));
    }

    #[test]
    fn mapped_ipv6_networks_are_stored_as_ipv4() {
        let list = allowed(&["::ffff:10.0.0.0/104", "::ffff:203.0.113.7"]);
        assert_eq!(
            list.to_strings(),
            strings(&["10.0.0.0/8", "203.0.113.7/32"])
        );
        assert_eq!(list, allowed(&["10.0.0.0/8", "203.0.113.7/32"]));
        assert!(list.allows(ip("10.1.2.3")));
        assert!(list.allows(ip("::ffff:10.1.2.3")));
        assert!(list.allows(ip("203.0.113.7")));
        assert!(!list.allows(ip("11.0.0.1")));

        let whole = allowed(&["::ffff:0:0/96"]);
        assert_eq!(whole.to_strings(), strings(&["0.0.0.0/0"]));
        assert!(whole.allows(ip("192.0.2.1")));
        assert!(!whole.allows(ip("2001:db8::1")));

        // Wider than the mapped range: IPv6 space, left as written.
        let wider = allowed(&["::/80"]);
        assert_eq!(wider.to_strings(), strings(&["::/80"]));
        assert!(wider.allows(ip("::1")));
        assert!(!wider.allows(ip("10.0.0.1")));
    }

    #[test]
    fn a_network_with_host_bits_set_is_refused_naming_its_network() {
        let message = rejection(strings(&["192.168.0.0/16", "10.0.0.1/8"]));
        assert!(message.contains("entry 1"), "{message}");
        assert!(message.contains("host bits"), "{message}");
        assert!(message.contains("10.0.0.0/8"), "{message}");
        assert!(!message.contains("10.0.0.1"), "{message}");

        let message = rejection(strings(&["2001:db8::1/32"]));
        assert!(message.contains("entry 0"), "{message}");
        assert!(message.contains("2001:db8::/32"), "{message}");
        assert!(!message.contains("2001:db8::1"), "{message}");
    }

    #[test]
    fn more_than_fifty_entries_are_refused() {
        let fifty = (0..MAX_ALLOWED_IPS)
            .map(|i| format!("10.0.{i}.0/24"))
            .collect();
        assert_eq!(AllowedIps::parse(fifty).map(|list| list.len()), Ok(50));

        let fifty_one = (0..=MAX_ALLOWED_IPS)
            .map(|i| format!("10.0.{i}.0/24"))
            .collect();
        let message = rejection(fifty_one);
        assert!(message.contains("50"), "{message}");

        let repeated = vec!["10.0.0.0/8".to_owned(); MAX_ALLOWED_IPS + 1];
        let message = rejection(repeated);
        assert!(
            message.contains("50"),
            "counted before deduplication: {message}"
        );
    }

    #[test]
    fn garbage_is_refused_without_echoing_it() {
        for bad in [
            "",
            "banana",
            "<script>alert(1)</script>",
            "10.0.0.0/33",
            "::/129",
            "10.0.0.256",
            "10.0.0",
            "010.0.0.0/8",
            "10.0.0.0/08",
            "10.0.0.0/+8",
            "10.0.0.0/",
            "/8",
            "10.0.0.0/8/8",
            " 10.0.0.1",
            "10.0.0.1 ",
            "fe80::1%eth0",
            "2001:db8::/-1",
            "10.0.0.0/8\n",
        ] {
            let message = rejection(strings(&["10.0.0.0/8", "::1", bad]));
            assert!(message.contains("entry 2"), "{bad:?}: {message}");
            if !bad.trim().is_empty() {
                assert!(!message.contains(bad.trim()), "{bad:?}: {message}");
            }
        }
        let message = rejection(strings(&["banana"]));
        assert_eq!(message, "entry 0 is not an IPv4 or IPv6 address or CIDR");
        let message = rejection(strings(&["10.0.0.0/33"]));
        assert!(message.contains("over 32"), "{message}");
        let message = rejection(strings(&["::/129"]));
        assert!(message.contains("over 128"), "{message}");
    }

    #[test]
    fn an_entry_longer_than_sixty_four_bytes_is_refused() {
        let long = format!("{}{}", "1".repeat(MAX_ALLOWED_IP_LEN), "x");
        let message = rejection(vec![long.clone()]);
        assert!(message.contains("entry 0"), "{message}");
        assert!(message.contains("64 bytes"), "{message}");
        assert!(!message.contains(&long), "{message}");

        let longest = "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255/128";
        assert!(AllowedIps::parse(strings(&[longest])).is_ok());
    }

    #[test]
    fn the_canonical_form_is_sorted_and_deduplicated() {
        let list = allowed(&[
            "2001:db8::/32",
            "192.168.0.0/16",
            "10.0.0.0/8",
            "10.0.0.0/8",
            "::ffff:10.0.0.0/104",
            "2001:0db8:0000::/32",
        ]);
        assert_eq!(
            list.to_strings(),
            strings(&["10.0.0.0/8", "192.168.0.0/16", "2001:db8::/32"])
        );
        assert_eq!(list.len(), 3);
        assert_eq!(
            list.iter().copied().collect::<Vec<_>>(),
            vec![
                "10.0.0.0/8".parse::<IpNet>().expect("net"),
                "192.168.0.0/16".parse().expect("net"),
                "2001:db8::/32".parse().expect("net"),
            ]
        );
        assert_eq!(
            list,
            allowed(&["10.0.0.0/8", "2001:db8::/32", "192.168.0.0/16"])
        );
    }

    #[test]
    fn allowed_ips_serialise_as_a_json_array_of_canonical_strings() {
        let list = allowed(&["2001:db8::/32", "203.0.113.7", "10.0.0.0/8"]);
        let json = serde_json::to_string(&list).expect("serializes");
        assert_eq!(json, r#"["10.0.0.0/8","203.0.113.7/32","2001:db8::/32"]"#);
        let back: AllowedIps = serde_json::from_str(&json).expect("deserializes");
        assert_eq!(back, list);
        assert_eq!(Vec::<String>::from(list.clone()), list.to_strings());
        assert_eq!(
            serde_json::to_string(&AllowedIps::default()).expect("serializes"),
            "[]"
        );
    }

    #[test]
    fn a_corrupt_stored_value_is_a_deserialisation_error() {
        let fifty_one = serde_json::to_string(
            &(0..=MAX_ALLOWED_IPS)
                .map(|i| format!("10.0.{i}.0/24"))
                .collect::<Vec<_>>(),
        )
        .expect("serializes");
        for stored in [
            r#"["10.0.0.1/8"]"#,
            r#"["banana"]"#,
            r#"["10.0.0.0/33"]"#,
            r#""10.0.0.0/8""#,
            r#"[1]"#,
            "null",
            &fifty_one,
        ] {
            assert!(
                serde_json::from_str::<AllowedIps>(stored).is_err(),
                "{stored}"
            );
        }
        let unsorted: AllowedIps = serde_json::from_str(r#"["::1/128","10.0.0.0/8","10.0.0.0/8"]"#)
            .expect("valid, if not canonical");
        assert_eq!(unsorted.to_strings(), strings(&["10.0.0.0/8", "::1/128"]));
    }

    fn v4_net(bits: u32, prefix_len: u8) -> IpNet {
        IpNet::V4(
            Ipv4Net::new(Ipv4Addr::from(bits), prefix_len)
                .expect("prefix length is at most 32")
                .trunc(),
        )
    }

    fn v6_net(bits: u128, prefix_len: u8) -> IpNet {
        IpNet::V6(
            ipnet::Ipv6Net::new(Ipv6Addr::from(bits), prefix_len)
                .expect("prefix length is at most 128")
                .trunc(),
        )
    }

    /// A valid network: IPv4, IPv6, or IPv6 inside `::ffff:0:0/96`.
    fn network() -> impl Strategy<Value = IpNet> {
        prop_oneof![
            (any::<u32>(), 0..=32u8).prop_map(|(bits, len)| v4_net(bits, len)),
            (any::<u128>(), 0..=128u8).prop_map(|(bits, len)| v6_net(bits, len)),
            (any::<u32>(), 96..=128u8)
                .prop_map(|(bits, len)| v6_net(0xffff_0000_0000 | u128::from(bits), len)),
        ]
    }

    /// A network as a client might write it: full-length ones sometimes as a
    /// plain address.
    fn written(network: &IpNet, plain: bool) -> String {
        if plain && network.prefix_len() == network.max_prefix_len() {
            network.addr().to_string()
        } else {
            network.to_string()
        }
    }

    /// An address to check: random IPv4, IPv6 or mapped IPv6, or one inside a
    /// listed network (as is, or an IPv4 one written mapped), so that both
    /// verdicts occur.
    fn probe(networks: &[IpNet], kind: u8, index: prop::sample::Index, bits: u128) -> IpAddr {
        let random_v4 = Ipv4Addr::from(bits as u32);
        match (kind, networks.is_empty()) {
            (0, _) | (3.., true) => IpAddr::V4(random_v4),
            (1, _) => IpAddr::V6(Ipv6Addr::from(bits)),
            (2, _) => IpAddr::V6(random_v4.to_ipv6_mapped()),
            (_, false) => {
                let inside = match networks[index.index(networks.len())] {
                    IpNet::V4(net) => IpAddr::V4(Ipv4Addr::from(
                        u32::from(net.network()) | (bits as u32 & u32::from(net.hostmask())),
                    )),
                    IpNet::V6(net) => IpAddr::V6(Ipv6Addr::from(
                        u128::from(net.network()) | (bits & u128::from(net.hostmask())),
                    )),
                };
                match inside {
                    IpAddr::V4(v4) if kind == 4 => IpAddr::V6(v4.to_ipv6_mapped()),
                    other => other,
                }
            }
        }
    }

    /// The rule stated the other way round: rather than mapping networks down to
    /// IPv4, a client with an IPv4 reading is allowed by an IPv4 network containing
    /// it or by a mapped IPv6 network (prefix length 96 or more) containing its
    /// mapped form.
    fn reference(networks: &[IpNet], ip: IpAddr) -> bool {
        let v4 = match ip {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(v6) => v6.to_ipv4_mapped(),
        };
        networks.is_empty()
            || networks.iter().any(|network| match (network, v4, ip) {
                (IpNet::V4(net), Some(v4), _) => net.contains(&v4),
                (IpNet::V6(net), Some(v4), _) => {
                    net.prefix_len() >= 96 && net.contains(&v4.to_ipv6_mapped())
                }
                (IpNet::V6(net), None, IpAddr::V6(v6)) => net.contains(&v6),
                _ => false,
            })
    }

    proptest! {
        #[test]
        fn a_verdict_never_depends_on_the_order_of_the_ranges(
            (listed, shuffled) in prop::collection::vec((network(), any::<bool>()), 0..=10)
                .prop_flat_map(|listed| (Just(listed.clone()), Just(listed).prop_shuffle())),
            probes in prop::collection::vec(
                (0..5u8, any::<prop::sample::Index>(), any::<u128>()),
                1..=8,
            ),
        ) {
            let networks: Vec<IpNet> = listed.iter().map(|(network, _)| *network).collect();
            let as_written = |list: &[(IpNet, bool)]| -> Vec<String> {
                list.iter().map(|(network, plain)| written(network, *plain)).collect()
            };
            let in_order = AllowedIps::parse(as_written(&listed))
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let shuffled = AllowedIps::parse(as_written(&shuffled))
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let mut reversed_list = listed.clone();
            reversed_list.reverse();
            let reversed = AllowedIps::parse(as_written(&reversed_list))
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(&in_order, &shuffled);
            prop_assert_eq!(&in_order, &reversed);
            for (kind, index, bits) in probes {
                let ip = probe(&networks, kind, index, bits);
                let expected = reference(&networks, ip);
                prop_assert_eq!(in_order.allows(ip), expected, "{}", ip);
                prop_assert_eq!(shuffled.allows(ip), expected, "{}", ip);
                prop_assert_eq!(reversed.allows(ip), expected, "{}", ip);
            }
        }

        #[test]
        fn canonical_strings_parse_back_to_an_equal_list(
            listed in prop::collection::vec(network(), 0..=10),
        ) {
            let parsed = AllowedIps::parse(listed.iter().map(ToString::to_string).collect())
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let again = AllowedIps::parse(parsed.to_strings())
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(&again.to_strings(), &parsed.to_strings());
            prop_assert_eq!(&again, &parsed);
            let json = serde_json::to_string(&parsed)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let back: AllowedIps = serde_json::from_str(&json)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(back, parsed);
        }
    }
}
