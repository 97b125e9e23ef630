//! The topology under construction, shared by every handle of a builder, and the naming of
//! its nodes, stores and internal topics.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use streams_core::topology::TopologyBuilder;

pub(crate) type AddStore = Box<dyn FnOnce(&mut TopologyBuilder, Vec<String>)>;

/// The topology under construction, shared by every stream and table handle of a builder.
pub(crate) struct Graph {
    pub(crate) topology: TopologyBuilder,
    /// Node names taken, with how many generated names share each base.
    pub(crate) nodes: HashMap<String, usize>,
    /// Stores and internal topics by name, with the operator that made each.
    pub(crate) stateful: BTreeMap<String, String>,
    /// Stores added with [`StreamsBuilder::add_state_store`], connected at build.
    pub(crate) user_stores: Vec<(String, AddStore)>,
    pub(crate) store_users: HashMap<String, Vec<String>>,
    /// The node and store that materialize a table for its joins, by the table's node: a table
    /// joined several times is materialized once.
    pub(crate) materialized_for_joins: HashMap<String, (String, String)>,
    /// The source node and path of each repartition, by the node it repartitions, its name
    /// (if given) and partition count: operators repartitioning one stream alike share it.
    pub(crate) repartitions: HashMap<RepartitionOf, (String, String)>,
    pub(crate) errors: Vec<String>,
}

pub(crate) type Shared = Rc<RefCell<Graph>>;

/// What a repartition repartitions: the node, the topic's name if given, its partition count.
pub(crate) type RepartitionOf = (String, Option<String>, Option<i32>);

/// A stable, short digest of an operator's path from its sources, for generated names.
fn digest(path: &str) -> String {
    // FNV-1a, 32 bits: stable across builds and platforms.
    let mut h: u32 = 0x811c_9dc5;
    for b in path.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("{h:08x}")
}

impl Graph {
    /// The name of a new stateless node: `explicit`, or one generated from its kind and path.
    /// Generated names of stateless nodes may carry a suffix when two operators of one kind
    /// hang off the same node; they name no state, so that is harmless.
    pub(crate) fn node_name(&mut self, kind: &str, path: &str, explicit: Option<&str>) -> String {
        if let Some(name) = explicit {
            if self.nodes.insert(name.to_string(), 1).is_some() {
                self.errors.push(format!("the name {name} is used twice"));
            }
            return name.to_string();
        }
        let base = format!("KSTREAM-{kind}-{}", digest(path));
        let n = self.nodes.entry(base.clone()).or_insert(0);
        *n += 1;
        if *n == 1 {
            base
        } else {
            format!("{base}-{n}")
        }
    }

    /// The name of a store or internal topic: `explicit`, or one generated from the path of
    /// the operator that makes it. Generated names depend only on the operators between the
    /// sources and this one, so adding an unrelated operator elsewhere never shifts them; two
    /// operators that would get the same generated name are refused, naming the operator to
    /// name (a changelog whose name shifts silently loses its state).
    pub(crate) fn state_name(
        &mut self,
        kind: &str,
        path: &str,
        explicit: Option<&str>,
        operator: &str,
    ) -> String {
        let (name, generated) = match explicit {
            Some(n) => (n.to_string(), false),
            None => (format!("KSTREAM-{kind}-{}", digest(path)), true),
        };
        if let Some(other) = self.stateful.insert(name.clone(), operator.to_string()) {
            if generated {
                self.errors.push(format!(
                    "{operator} and {other} would get the same generated state name {name}; \
                     name one of them (Materialized::named, Grouped::named or Repartitioned::named)"
                ));
            } else {
                self.errors.push(format!(
                    "the store or topic name {name} is used by both {other} and {operator}"
                ));
            }
        }
        name
    }

    /// Connects a processor to a store added with [`StreamsBuilder::add_state_store`].
    pub(crate) fn connect_store(&mut self, store: &str, processor: &str) {
        self.store_users
            .entry(store.to_string())
            .or_default()
            .push(processor.to_string());
    }
}
