//! The checks `TopologyBuilder::build` runs, one function each, and the freezing of a checked
//! graph into a [`Topology`] split into sub-topologies.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use super::builder::{NodeDef, TopologyBuilder};
use super::nodes::NodeKind;
use super::{Inner, SubTopology, Topology};
use crate::node::NodeMeta;
use crate::store::{GlobalStores, StoreBuilder};
use crate::{Error, Result};

fn invalid<T>(message: String) -> Result<T> {
    Err(Error::Config(format!("topology: {message}")))
}

/// Checks the builder's graph and freezes it.
pub(super) fn freeze(b: TopologyBuilder) -> Result<Topology> {
    if b.nodes.is_empty() {
        return invalid("it has no nodes".into());
    }
    let index: HashMap<&str, usize> = b
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (&*n.name, i))
        .collect();
    let mut metas: Vec<NodeMeta> = b
        .nodes
        .iter()
        .map(|n| NodeMeta {
            name: n.name.clone(),
            children: vec![],
            parents: vec![],
            stores: vec![],
        })
        .collect();
    connect_parents(&b.nodes, &index, &mut metas)?;
    check_acyclic(&metas)?;
    let stores = connect_stores(b.stores, &b.nodes, &index, &mut metas)?;
    check_one_reader_per_topic(&b.nodes)?;
    check_global_tables(&b.globals, &b.nodes, &stores)?;
    let kinds: Vec<NodeKind> = b.nodes.into_iter().map(|n| n.kind).collect();
    let subtopologies = split(&metas, &kinds, &stores)?;
    Ok(Topology {
        global_stores: GlobalStores::new(&b.globals),
        inner: Arc::new(Inner {
            metas,
            kinds,
            stores,
            subtopologies,
            repartition: b.repartition,
            globals: b.globals,
        }),
    })
}

/// Every parent exists and is not a sink, sources have none and other nodes some, no parent
/// is named twice, and a parent's output type is its child's input type.
fn connect_parents(
    nodes: &[NodeDef],
    index: &HashMap<&str, usize>,
    metas: &mut [NodeMeta],
) -> Result<()> {
    for (i, node) in nodes.iter().enumerate() {
        if node.kind.is_source() && !node.parents.is_empty() {
            return invalid(format!("source {} cannot have parents", node.name));
        }
        if !node.kind.is_source() && node.parents.is_empty() {
            return invalid(format!("{} has no parents", node.name));
        }
        for p in &node.parents {
            let Some(&pi) = index.get(p.as_str()) else {
                return invalid(format!("{} names an unknown parent {p}", node.name));
            };
            let parent = &nodes[pi];
            if parent.kind.is_sink() {
                return invalid(format!(
                    "{} names sink {p} as a parent; sinks have no children",
                    node.name
                ));
            }
            let (Some(out), Some(inp)) = (parent.output, node.input) else {
                return Err(Error::Internal(format!(
                    "node {} or its parent {p} has no declared type",
                    node.name
                )));
            };
            if !out.same(&inp) {
                return invalid(format!(
                    "{p} forwards {out} but its child {} takes {inp}",
                    node.name
                ));
            }
            if metas[i].parents.contains(&pi) {
                return invalid(format!("{} names parent {p} twice", node.name));
            }
            metas[i].parents.push(pi);
            metas[pi].children.push(i);
        }
    }
    Ok(())
}

/// No node is its own descendant (depth-first search over child edges).
fn check_acyclic(metas: &[NodeMeta]) -> Result<()> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnPath,
        Done,
    }
    fn visit(i: usize, metas: &[NodeMeta], marks: &mut [Mark], path: &mut Vec<usize>) -> bool {
        match marks[i] {
            Mark::OnPath => {
                path.push(i);
                return true;
            }
            Mark::Done => return false,
            Mark::New => {}
        }
        marks[i] = Mark::OnPath;
        path.push(i);
        for &c in &metas[i].children {
            if visit(c, metas, marks, path) {
                return true;
            }
        }
        path.pop();
        marks[i] = Mark::Done;
        false
    }
    let mut marks = vec![Mark::New; metas.len()];
    for i in 0..metas.len() {
        let mut path = vec![];
        if visit(i, metas, &mut marks, &mut path) {
            let last = *path.last().unwrap_or(&i);
            let at = path.iter().position(|&p| p == last).unwrap_or(0);
            let names: Vec<&str> = path[at..].iter().map(|&c| &*metas[c].name).collect();
            return invalid(format!("it has a cycle: {}", names.join(" -> ")));
        }
    }
    Ok(())
}

/// Every store is connected to processors that exist; records which nodes use which store.
fn connect_stores(
    declared: Vec<(Arc<dyn StoreBuilder>, Vec<String>)>,
    nodes: &[NodeDef],
    index: &HashMap<&str, usize>,
    metas: &mut [NodeMeta],
) -> Result<Vec<Arc<dyn StoreBuilder>>> {
    let mut stores = vec![];
    for (si, (store, users)) in declared.into_iter().enumerate() {
        for u in &users {
            let Some(&ui) = index.get(u.as_str()) else {
                return invalid(format!(
                    "store {} is connected to an unknown processor {u}",
                    store.name()
                ));
            };
            if !nodes[ui].kind.is_processor() {
                return invalid(format!(
                    "store {} is connected to {u}, which is not a processor",
                    store.name()
                ));
            }
            metas[ui].stores.push(si);
        }
        stores.push(store);
    }
    Ok(stores)
}

/// A global table's topic is read by no source, and its name is no other store's.
fn check_global_tables(
    globals: &[(String, String)],
    nodes: &[NodeDef],
    stores: &[Arc<dyn StoreBuilder>],
) -> Result<()> {
    for (i, (name, topic)) in globals.iter().enumerate() {
        if globals[..i].iter().any(|(n, _)| n == name) || stores.iter().any(|s| s.name() == name) {
            return invalid(format!("store name {name} is used twice"));
        }
        for n in nodes {
            if let NodeKind::Source { topics, .. } = &n.kind {
                if topics.contains(topic) {
                    return invalid(format!(
                        "topic {topic} is read by the global store {name} and by the source {}",
                        n.name
                    ));
                }
            }
        }
    }
    Ok(())
}

/// A topic is read by one source only.
fn check_one_reader_per_topic(nodes: &[NodeDef]) -> Result<()> {
    let mut readers: HashMap<&str, &str> = HashMap::new();
    for n in nodes {
        if let NodeKind::Source { topics, .. } = &n.kind {
            for t in topics {
                if let Some(other) = readers.insert(t, &n.name) {
                    return invalid(format!(
                        "topic {t} is read by two sources, {other} and {}",
                        n.name
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Sub-topologies: the connected components over parent-child edges and shared stores, in
/// the order of their first node; each must contain a source.
fn split(
    metas: &[NodeMeta],
    kinds: &[NodeKind],
    stores: &[Arc<dyn StoreBuilder>],
) -> Result<Vec<SubTopology>> {
    let mut group: Vec<usize> = (0..metas.len()).collect();
    fn find(g: &mut [usize], i: usize) -> usize {
        let mut r = i;
        while g[r] != r {
            r = g[r];
        }
        g[i] = r;
        r
    }
    let union = |group: &mut Vec<usize>, a: usize, b: usize| {
        let (ra, rb) = (find(group, a), find(group, b));
        group[ra] = rb;
    };
    for (i, m) in metas.iter().enumerate() {
        for &c in &m.children {
            union(&mut group, i, c);
        }
    }
    for si in 0..stores.len() {
        let users: Vec<usize> = (0..metas.len())
            .filter(|&i| metas[i].stores.contains(&si))
            .collect();
        for w in users.windows(2) {
            union(&mut group, w[0], w[1]);
        }
    }
    let mut order: Vec<usize> = vec![];
    let mut members: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for i in 0..metas.len() {
        let root = find(&mut group, i);
        if !members.contains_key(&root) {
            order.push(root);
        }
        members.entry(root).or_default().push(i);
    }
    let mut subtopologies = vec![];
    for (id, root) in order.iter().enumerate() {
        let nodes = members[root].clone();
        let mut source_topics = vec![];
        let mut sink_topics: Vec<String> = vec![];
        let mut store_names = BTreeSet::new();
        for &n in &nodes {
            match &kinds[n] {
                NodeKind::Source { topics, .. } => source_topics.extend(topics.iter().cloned()),
                NodeKind::Sink { topic, .. } => {
                    if !sink_topics.contains(topic) {
                        sink_topics.push(topic.clone())
                    }
                }
                NodeKind::Processor { .. } => {}
            }
            store_names.extend(
                metas[n]
                    .stores
                    .iter()
                    .map(|&s| stores[s].name().to_string()),
            );
        }
        if source_topics.is_empty() {
            let names: Vec<&str> = nodes.iter().map(|&n| &*metas[n].name).collect();
            return invalid(format!(
                "nodes {} are not reachable from any source",
                names.join(", ")
            ));
        }
        subtopologies.push(SubTopology {
            id: id as u32,
            nodes,
            source_topics,
            sink_topics,
            stores: store_names.into_iter().collect(),
        });
    }
    Ok(subtopologies)
}
