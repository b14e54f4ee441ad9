//! The vocabulary of the datapath bench's profile, shared by the bench that writes its JSON
//! report and `cargo xtask bench`, which reads it into BENCHMARKS.md.

use serde::{Deserialize, Serialize};

/// What a kernel function is, for a per-packet cost: the parts a reader can weigh.
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
#[serde(rename_all = "snake_case")]
pub enum PartKind {
    Program,
    HashLookups,
    Rewrite,
    Clock,
    Other,
    /// A kind a later bench added, read from its report: counted in no named part.
    #[serde(other)]
    Unknown,
}

impl PartKind {
    pub fn describe(self) -> &'static str {
        match self {
            PartKind::Program => {
                "the program's own instructions (incl. inlined array and per-CPU map lookups)"
            }
            PartKind::HashLookups => "hash map lookups (service, conntrack entries)",
            PartKind::Rewrite => "packet rewrite helpers (store, checksum updates)",
            PartKind::Clock => "clock reads",
            PartKind::Other | PartKind::Unknown => "other kernel functions",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::PartKind;

    #[test]
    fn reads_its_own_names_and_a_later_benchs() {
        let kinds: Vec<PartKind> =
            serde_json::from_str(r#"["program", "hash_lookups", "tail_calls"]"#).unwrap();
        assert_eq!(
            kinds,
            [PartKind::Program, PartKind::HashLookups, PartKind::Unknown]
        );
        assert_eq!(
            serde_json::to_string(&PartKind::HashLookups).unwrap(),
            r#""hash_lookups""#
        );
    }
}
