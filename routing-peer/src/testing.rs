//! One fixture builder for the unit and packet tests: a configuration file
//! written the way an operator writes it, from a few calls.

use std::fmt::Write;

use crate::wireguard::encode_key;

/// A configuration file under construction. Peers get distinct keys.
pub struct ConfigText {
    text: String,
    peers: u8,
}

fn list(items: &[&str]) -> String {
    let quoted: Vec<String> = items.iter().map(|i| format!("\"{i}\"")).collect();
    format!("[{}]", quoted.join(", "))
}

impl ConfigText {
    /// `[routing_peer]` named `gw` on overlay `overlay_interface` with
    /// `overlay_addresses`, LAN `lan0`, in `groups`.
    pub fn gateway(overlay_interface: &str, overlay_addresses: &[&str], groups: &[&str]) -> Self {
        let text = format!(
            "[routing_peer]\nname = \"gw\"\noverlay_interface = \"{overlay_interface}\"\n\
             overlay_addresses = {}\nprivate_key_file = \"/dev/null\"\n\
             lan_interfaces = [\"lan0\"]\ngroups = {}\n",
            list(overlay_addresses),
            list(groups)
        );
        Self { text, peers: 0 }
    }

    pub fn peer(mut self, name: &str, addresses: &[&str], groups: &[&str]) -> Self {
        self.peers += 1;
        let key = encode_key(&[self.peers; 32]);
        let _ = write!(
            self.text,
            "\n[[peers]]\nname = \"{name}\"\npublic_key = \"{key}\"\naddresses = {}\ngroups = {}\n",
            list(addresses),
            list(groups)
        );
        self
    }

    pub fn network(mut self, name: &str, masquerade: bool) -> Self {
        let _ = write!(
            self.text,
            "\n[[networks]]\nname = \"{name}\"\nmasquerade = {masquerade}\n"
        );
        self
    }

    /// A resource of the network added last.
    pub fn resource(mut self, name: &str, address: &str, groups: &[&str]) -> Self {
        let _ = write!(
            self.text,
            "[[networks.resources]]\nname = \"{name}\"\naddress = \"{address}\"\ngroups = {}\n",
            list(groups)
        );
        self
    }

    /// Anything else, as TOML (policies, settings tables).
    pub fn raw(mut self, toml: &str) -> Self {
        self.text.push('\n');
        self.text.push_str(toml);
        self
    }

    pub fn build(self) -> String {
        self.text
    }
}

/// The office most tests use: alice and bob in Development, carol in
/// Sales; the wiki (v4 and v6) in Internal Apps and the office LAN; one
/// policy, Development to Internal Apps on TCP 443; then `extra`.
pub fn office(overlay_interface: &str, masquerade: bool, extra: &str) -> String {
    ConfigText::gateway(
        overlay_interface,
        &["100.64.0.1/10", "2001:db8:100::1/64"],
        &["Gateways"],
    )
    .peer(
        "alice",
        &["100.64.0.2", "2001:db8:100::2"],
        &["Development"],
    )
    .peer("bob", &["100.64.0.3"], &["Development"])
    .peer("carol", &["100.64.0.4"], &["Sales"])
    .network("Berlin Office", masquerade)
    .resource("wiki", "198.51.100.5/32", &["Internal Apps"])
    .resource("office-lan", "198.51.100.0/24", &["LAN"])
    .resource("wiki6", "2001:db8:1::5/128", &["Internal Apps"])
    .raw(
        "[[policies]]\nname = \"dev-to-apps\"\nsources = [\"Development\"]\n\
         destinations = [\"Internal Apps\"]\nprotocol = \"tcp\"\nports = [443]\n",
    )
    .raw(extra)
    .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_office_fixture_is_a_valid_configuration() {
        let text = office("ov0", true, "");
        let loaded = crate::config::parse(std::path::Path::new("t.toml"), &text)
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(loaded.config.peers.len(), 3);
        assert_eq!(loaded.config.networks[0].resources.len(), 3);
    }
}
