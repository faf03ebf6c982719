//! Rereading a large configuration without reparsing what did not change.
//!
//! At 100k rules the file is 21 MB of TOML and parsing it is most of a
//! reload (0.3–0.6 s on an idle core, three times that while the cores
//! forward traffic). A reload usually changes a few entries, so the file is
//! cut at its table headers and each `[[peers]]`, `[[networks]]`,
//! `[[networks.resources]]` and `[[policies]]` entry is parsed on its own,
//! from a cache keyed by its exact text. Anything this cutting does not
//! recognise with certainty (multi-line strings, other headers, arrays of
//! tables written inline, an entry that does not parse alone) goes to the
//! plain full parse, which also produces the error messages; the result is
//! validated the same way either way.

use std::path::Path;

use crate::{
    config::{self, Config, ConfigError, Loaded, Network, Peer, Policy, Resource},
    model::FastMap,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Kind {
    Peer,
    Network,
    Resource,
    Policy,
}

#[derive(Clone, Debug)]
enum Entry {
    Peer(Peer),
    Network(Network),
    Resource(Resource),
    Policy(Policy),
}

/// Parsed entries by kind and exact text, as of the last load.
#[derive(Default)]
pub struct ParseCache {
    entries: [FastMap<Box<str>, Entry>; 4],
    last_text: String,
}

impl Kind {
    fn index(self) -> usize {
        self as usize
    }
}

/// How the last `load` went, for the logs and the tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Entries found in the cache, and parsed anew.
    pub reused: usize,
    pub parsed: usize,
    /// The file was parsed whole (it could not be cut with certainty).
    pub full_parse: bool,
}

/// One entry's text, cut out of the file.
struct Chunk<'t> {
    kind: Kind,
    body: &'t str,
}

impl ParseCache {
    /// Reads, parses and validates `path`, reusing unchanged entries.
    pub fn load(&mut self, path: &Path) -> Result<(Loaded, CacheStats), ConfigError> {
        let text = config::read_text(path)?;
        let result = self.parse(path, &text);
        if result.is_ok() {
            self.last_text = text;
        }
        result
    }

    /// The text of the last file that loaded: what the daemon applies.
    pub fn last_text(&self) -> &str {
        &self.last_text
    }

    pub fn parse(&mut self, path: &Path, text: &str) -> Result<(Loaded, CacheStats), ConfigError> {
        if let Some((head, chunks)) = cut(text) {
            if let Some((config, stats)) = self.assemble(&head, &chunks) {
                return config::validated(path, config).map(|l| (l, stats));
            }
        }
        self.entries = Default::default();
        let stats = CacheStats {
            full_parse: true,
            ..Default::default()
        };
        config::parse(path, text).map(|l| (l, stats))
    }

    /// Builds the configuration from the head and the entries, or `None`
    /// when some piece does not parse alone (the full parse then says why).
    fn assemble(&mut self, head: &str, chunks: &[Chunk<'_>]) -> Option<(Config, CacheStats)> {
        // Arrays written inline (`policies = [...]`, even empty) and
        // `[[...]]` entries of the same array do not mix in TOML: leave
        // such files to the full parse.
        if ["peers", "networks", "policies"]
            .iter()
            .any(|k| defines_key(head, k))
        {
            return None;
        }
        let mut config: Config = toml::from_str(head).ok()?;
        let mut stats = CacheStats::default();
        let mut kept: [FastMap<Box<str>, Entry>; 4] = Default::default();
        for chunk in chunks {
            // Blank lines around an entry do not change it.
            let text = chunk.body.trim();
            let (old, new) = (
                &mut self.entries[chunk.kind.index()],
                &mut kept[chunk.kind.index()],
            );
            // Seen in this file already (a duplicate entry): parse again,
            // so that validation sees both.
            let (key, entry) = match old.remove_entry(text) {
                Some(found) => {
                    stats.reused += 1;
                    found
                }
                None => {
                    stats.parsed += 1;
                    (text.into(), parse_entry(chunk)?)
                }
            };
            match &entry {
                Entry::Peer(p) => config.peers.push(p.clone()),
                Entry::Policy(p) => config.policies.push(p.clone()),
                Entry::Network(n) => {
                    if defines_key(chunk.body, "resources") {
                        return None;
                    }
                    config.networks.push(n.clone());
                }
                Entry::Resource(r) => config.networks.last_mut()?.resources.push(r.clone()),
            }
            new.insert(key, entry);
        }
        // Only what this file holds stays cached.
        self.entries = kept;
        Some((config, stats))
    }
}

/// Whether a line of `text` assigns `key` (bare or quoted).
fn defines_key(text: &str, key: &str) -> bool {
    text.lines().any(|line| {
        let t = line.trim_start();
        let rest = t
            .strip_prefix(key)
            .or_else(|| t.strip_prefix(&format!("\"{key}\"")))
            .or_else(|| t.strip_prefix(&format!("'{key}'")));
        rest.is_some_and(|r| r.trim_start().starts_with('='))
    })
}

fn parse_entry(chunk: &Chunk<'_>) -> Option<Entry> {
    let body = chunk.body;
    Some(match chunk.kind {
        Kind::Peer => Entry::Peer(toml::from_str(body).ok()?),
        Kind::Network => Entry::Network(toml::from_str(body).ok()?),
        Kind::Resource => Entry::Resource(toml::from_str(body).ok()?),
        Kind::Policy => Entry::Policy(toml::from_str(body).ok()?),
    })
}

/// What a header line opens.
enum Header {
    /// `[routing_peer]`, `[conntrack]`, `[dns]`, `[fragments]`: parsed with the head.
    Section,
    Entry(Kind),
}

/// Recognises a table header line; `Err` for a line that starts like one
/// but is not one this cutting knows (the full parse decides then).
fn header(line: &str) -> Result<Option<Header>, ()> {
    let t = line.trim();
    if !t.starts_with('[') {
        return Ok(None);
    }
    let (name, rest) = if let Some(inner) = t.strip_prefix("[[") {
        let (name, rest) = inner.split_once("]]").ok_or(())?;
        let kind = match name.trim() {
            "peers" => Kind::Peer,
            "networks" => Kind::Network,
            "networks.resources" => Kind::Resource,
            "policies" => Kind::Policy,
            _ => return Err(()),
        };
        (Header::Entry(kind), rest)
    } else {
        let (name, rest) = t[1..].split_once(']').ok_or(())?;
        match name.trim() {
            "routing_peer" | "conntrack" | "dns" | "fragments" => (Header::Section, rest),
            _ => return Err(()),
        }
    };
    let rest = rest.trim_start();
    if rest.is_empty() || rest.starts_with('#') {
        Ok(Some(name))
    } else {
        Err(())
    }
}

/// Cuts `text` into the head (top-level keys and the plain sections) and
/// the entries, or `None` when it cannot be done with certainty.
fn cut(text: &str) -> Option<(String, Vec<Chunk<'_>>)> {
    // A header-like line inside a multi-line string is not a header.
    if text.contains("\"\"\"") || text.contains("'''") {
        return None;
    }
    let mut head = String::new();
    let mut chunks = Vec::new();
    // The open piece: an entry (kind, body start) or the head.
    let mut open: Option<(Kind, usize)> = None;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let start = offset;
        offset += line.len();
        match header(line).ok()? {
            None => {
                if open.is_none() {
                    head.push_str(line);
                }
            }
            Some(found) => {
                if let Some((kind, body_start)) = open.take() {
                    chunks.push(Chunk {
                        kind,
                        body: &text[body_start..start],
                    });
                }
                match found {
                    Header::Section => {
                        if !head.ends_with('\n') && !head.is_empty() {
                            head.push('\n');
                        }
                        head.push_str(line);
                    }
                    Header::Entry(kind) => open = Some((kind, offset)),
                }
            }
        }
    }
    if let Some((kind, body_start)) = open {
        chunks.push(Chunk {
            kind,
            body: &text[body_start..],
        });
    }
    Some((head, chunks))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> String {
        include_str!("../../../examples/berlin-office.toml")
            .replace("@WG_IFACE@", "wg0")
            .replace("@ROUTER_KEY_FILE@", "/dev/null")
            .replace(
                "@LAPTOP_KEY@",
                "aGVsbG8gd29ybGQgaGVsbG8gd29ybGQgaGVsbG8gd28=",
            )
            .replace(
                "@SALES_KEY@",
                "c2FsZXMgd29ybGQgaGVsbG8gd29ybGQgaGVsbG8gd28=",
            )
            .replace("@GRAFANA_ADDRESS@", "198.51.100.6/32")
            .replace("@GRAFANA_GROUPS@", "[\"Dashboards\"]")
    }

    fn both(text: &str, cache: &mut ParseCache) -> CacheStats {
        let path = Path::new("t.toml");
        let plain = config::parse(path, text).expect("valid").config;
        let (cached, stats) = cache.parse(path, text).expect("valid");
        assert_eq!(cached.config, plain, "cut and full parse disagree");
        stats
    }

    #[test]
    fn a_reload_reparses_only_changed_entries_and_agrees_with_a_full_parse() {
        let mut cache = ParseCache::default();
        let text = example();
        let first = both(&text, &mut cache);
        assert!(!first.full_parse);
        assert_eq!(first.reused, 0);
        let entries = first.parsed;
        // The same file again: nothing is parsed.
        let again = both(&text, &mut cache);
        assert_eq!((again.reused, again.parsed), (entries, 0));
        // One policy's port changes: that entry alone is parsed.
        let changed = text.replace("ports = [443]", "ports = [8443]");
        let one = both(&changed, &mut cache);
        assert_eq!((one.reused, one.parsed), (entries - 1, 1));
        // A policy added at the end, its header with a comment.
        let added = format!(
            "{changed}\n[[policies]] # added\nname = \"extra\"\nsources = [\"Sales\"]\ndestinations = [\"Internal Apps\"]\n"
        );
        let more = both(&added, &mut cache);
        assert_eq!((more.reused, more.parsed), (entries, 1));
        assert!(!more.full_parse);
    }

    #[test]
    fn what_cannot_be_cut_with_certainty_takes_the_full_parse() {
        let base = example();
        let cases = [
            // A multi-line string.
            base.replace("description = \"Office LAN behind berlin-gw\"", "description = \"\"\"Office\nLAN\"\"\""),
            // An unknown table header.
            format!("{base}\n[extra]\nx = 1\n"),
            // Resources written inline in a network.
            base.replace(
                "masquerade = true",
                "masquerade = true\nresources = [{ name = \"inline\", address = \"198.51.100.9/32\" }]",
            ),
            // An empty inline array before entries of the same array.
            base.replace("[routing_peer]", "policies = []\n[routing_peer]"),
        ];
        for text in &cases {
            let mut cache = ParseCache::default();
            let path = Path::new("t.toml");
            let plain = config::parse(path, text);
            let cached = cache.parse(path, text);
            match (plain, cached) {
                (Ok(p), Ok((c, stats))) => {
                    assert_eq!(c.config, p.config);
                    assert!(stats.full_parse, "{text}");
                }
                (Err(p), Err(c)) => assert_eq!(p.to_string(), c.to_string()),
                (p, c) => panic!("full {:?} vs cut {:?}", p.is_ok(), c.is_ok()),
            }
        }
    }

    #[test]
    fn a_file_written_by_the_toml_serializer_parses_the_same() {
        let path = Path::new("t.toml");
        let config = config::parse(path, &example()).unwrap().config;
        let text = toml::to_string(&config).unwrap();
        let mut cache = ParseCache::default();
        let stats = both(&text, &mut cache);
        assert!(stats.parsed > 0 || stats.full_parse);
    }

    #[test]
    fn errors_are_the_full_parse_errors() {
        let text = example().replace("ports = [443]", "ports = [443\n");
        let mut cache = ParseCache::default();
        let path = Path::new("t.toml");
        let plain = config::parse(path, &text).unwrap_err().to_string();
        let cached = cache.parse(path, &text).unwrap_err().to_string();
        assert_eq!(plain, cached);
        assert!(cached.contains("line"), "{cached}");
    }
}
