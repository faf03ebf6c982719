//! Domain resources, and the one answer to "which resource covers this
//! name", for the DNS forwarder and `policy check` alike.

use crate::config::ResourceAddress;

/// A domain resource whose resolved addresses the DNS forwarder installs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomainResource {
    pub resource_id: u32,
    pub name: String,
    pub address: ResourceAddress,
    pub groups: Vec<String>,
}

/// The domain resource covering `name`: an exact domain first, else the
/// wildcard `*.x` with the longest `x` that `name` lies below (a wildcard
/// never covers `x` itself). Case and a trailing dot do not matter; the
/// order of the configuration does not either.
pub fn domain_for<'a>(domains: &'a [DomainResource], name: &str) -> Option<&'a DomainResource> {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let exact = domains
        .iter()
        .find(|d| matches!(&d.address, ResourceAddress::Domain(n) if *n == name));
    exact.or_else(|| {
        domains
            .iter()
            .filter_map(|d| match &d.address {
                ResourceAddress::Wildcard(suffix)
                    if name.len() > suffix.len() + 1
                        && name.ends_with(suffix.as_str())
                        && name.as_bytes()[name.len() - suffix.len() - 1] == b'.' =>
                {
                    Some((suffix.len(), d))
                }
                _ => None,
            })
            .max_by_key(|(len, _)| *len)
            .map(|(_, d)| d)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resource(id: u32, address: &str) -> DomainResource {
        DomainResource {
            resource_id: id,
            name: format!("r{id}"),
            address: crate::config::parse_resource_address(address).expect("valid"),
            groups: Vec::new(),
        }
    }

    #[test]
    fn exact_beats_wildcard_and_the_longest_wildcard_wins_in_any_order() {
        let domains = [
            resource(1, "*.corp.example"),
            resource(2, "*.eng.corp.example"),
            resource(3, "wiki.eng.corp.example"),
        ];
        let id = |name: &str| domain_for(&domains, name).map(|d| d.resource_id);
        assert_eq!(id("wiki.eng.corp.example"), Some(3));
        assert_eq!(id("WIKI.eng.corp.example."), Some(3));
        assert_eq!(id("git.eng.corp.example"), Some(2));
        assert_eq!(id("mail.corp.example"), Some(1));
        assert_eq!(id("corp.example"), None);
        assert_eq!(id("xcorp.example"), None);
        let mut reversed = domains.clone();
        reversed.reverse();
        assert_eq!(
            domain_for(&reversed, "git.eng.corp.example").map(|d| d.resource_id),
            Some(2)
        );
    }
}
