//! Network blocks: the address a flow's IP is grouped under (e.g. 203.0.113.0/24).

use std::net::IpAddr;

use ipnet::IpNet;

/// The block of `ip` keeping `v4_bits` (IPv4) or `v6_bits` (IPv6) prefix bits; longer
/// prefixes than the family allows are cut to its width.
pub fn network(ip: IpAddr, v4_bits: u8, v6_bits: u8) -> IpNet {
    let bits = match ip {
        IpAddr::V4(_) => v4_bits.min(32),
        IpAddr::V6(_) => v6_bits.min(128),
    };
    // The prefix length is within the family's width, so this cannot fail.
    IpNet::new(ip, bits).map_or(IpNet::from(ip), |n| n.trunc())
}

/// [`network`] as text, "203.0.113.0/24".
pub fn cidr(ip: IpAddr, v4_bits: u8, v6_bits: u8) -> String {
    network(ip, v4_bits, v6_bits).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_keep_the_prefix_bits_of_their_family() {
        let v4: IpAddr = "203.0.113.77".parse().unwrap();
        let v6: IpAddr = "2001:db8::1234".parse().unwrap();
        assert_eq!(cidr(v4, 24, 64), "203.0.113.0/24");
        assert_eq!(cidr(v4, 40, 64), "203.0.113.77/32");
        assert_eq!(cidr(v4, 0, 64), "0.0.0.0/0");
        assert_eq!(cidr(v6, 24, 64), "2001:db8::/64");
        assert_eq!(cidr(v6, 24, 200), "2001:db8::1234/128");
        assert!(network(v4, 24, 64).contains(&v4));
    }
}
