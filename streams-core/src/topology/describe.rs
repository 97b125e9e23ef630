//! What [`Topology::describe`](super::Topology::describe) returns: the text form and a
//! Mermaid flowchart.

use std::fmt;

use super::nodes::NodeKind;
use super::Topology;

/// What [`Topology::describe`] returns: `Display` gives the text form, [`to_mermaid`](Self::to_mermaid)
/// a Mermaid flowchart.
pub struct TopologyDescription {
    pub(super) topology: Topology,
}

impl TopologyDescription {
    /// A Mermaid flowchart of the topology (paste it into any Mermaid renderer).
    pub fn to_mermaid(&self) -> String {
        let inner = &self.topology.inner;
        let mut out = String::from("flowchart LR\n");
        for st in &inner.subtopologies {
            out.push_str(&format!(
                "  subgraph sub{}[\"Sub-topology {}\"]\n",
                st.id, st.id
            ));
            for &n in &st.nodes {
                out.push_str(&format!("    n{n}[\"{}\"]\n", inner.metas[n].name));
            }
            out.push_str("  end\n");
        }
        for (i, m) in inner.metas.iter().enumerate() {
            match &inner.kinds[i] {
                NodeKind::Source { topics, .. } => {
                    for t in topics {
                        out.push_str(&format!("  t_{}[(\"{t}\")] --> n{i}\n", mermaid_id(t)));
                    }
                }
                NodeKind::Sink { topic, .. } => {
                    out.push_str(&format!(
                        "  n{i} --> t_{}[(\"{topic}\")]\n",
                        mermaid_id(topic)
                    ));
                }
                NodeKind::Processor { .. } => {}
            }
            for &c in &m.children {
                out.push_str(&format!("  n{i} --> n{c}\n"));
            }
        }
        out
    }
}

fn mermaid_id(topic: &str) -> String {
    topic
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

impl fmt::Display for TopologyDescription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &self.topology.inner;
        writeln!(f, "Topologies:")?;
        for st in &inner.subtopologies {
            writeln!(f, "  Sub-topology: {}", st.id)?;
            for &n in &st.nodes {
                let m = &inner.metas[n];
                match &inner.kinds[n] {
                    NodeKind::Source { topics, .. } => writeln!(
                        f,
                        "    Source: {} (topics: [{}])",
                        m.name,
                        topics.join(", ")
                    )?,
                    NodeKind::Processor { .. } => {
                        let stores: Vec<&str> =
                            m.stores.iter().map(|&s| inner.stores[s].name()).collect();
                        writeln!(
                            f,
                            "    Processor: {} (stores: [{}])",
                            m.name,
                            stores.join(", ")
                        )?
                    }
                    NodeKind::Sink { topic, .. } => {
                        writeln!(f, "    Sink: {} (topic: {topic})", m.name)?
                    }
                }
                if !m.children.is_empty() {
                    let names: Vec<&str> =
                        m.children.iter().map(|&c| &*inner.metas[c].name).collect();
                    writeln!(f, "      --> {}", names.join(", "))?;
                }
                if !m.parents.is_empty() {
                    let names: Vec<&str> =
                        m.parents.iter().map(|&c| &*inner.metas[c].name).collect();
                    writeln!(f, "      <-- {}", names.join(", "))?;
                }
            }
        }
        Ok(())
    }
}
