//! Definitions: protobuf (`runstream.v1.WorkflowDefinition`, `AgentDefinition`) ↔ the `definition` module's types.
//!
//! Converting in catches only what the types cannot hold (a node or a source with nothing set, a negative delay);
//! everything else is the definition's validation, when it is registered. Both name the field at fault by its
//! path in the request (`definition.steps[2].foreach.node`).

use std::{collections::BTreeMap, time::SystemTime};

use prost_types::Timestamp;
use tonic::Status;

use super::{
    convert::{json_to_pb, pb_to_json},
    status::invalid_field,
};
use crate::{
    definition::{
        AgentDef, BranchCase, BranchNode, Condition, ForeachNode, LoopNode, MapNode, Node, ParallelNode, Retries,
        SleepNode, Source, StepNode, Test, ToolDef, WorkflowDef, WorkflowNode,
    },
    pb,
};

type In<T> = Result<T, Status>;

/// A definition as sent (its `version` and `registered_at` are the server's, so ignored).
pub(crate) fn workflow_from_pb(def: pb::WorkflowDefinition) -> In<WorkflowDef> {
    Ok(WorkflowDef {
        id: def.id,
        description: def.description,
        input_schema: def.input_schema.map(pb_to_json),
        output_schema: def.output_schema.map(pb_to_json),
        steps: def
            .steps
            .into_iter()
            .enumerate()
            .map(|(i, n)| node_from_pb(&format!("definition.steps[{i}]"), n))
            .collect::<In<_>>()?,
    })
}

/// A registered definition, with its version and registration time.
pub(crate) fn workflow_to_pb(def: WorkflowDef, version: u32, registered_at: SystemTime) -> pb::WorkflowDefinition {
    pb::WorkflowDefinition {
        id: def.id,
        description: def.description,
        input_schema: def.input_schema.as_ref().map(json_to_pb),
        output_schema: def.output_schema.as_ref().map(json_to_pb),
        steps: def.steps.into_iter().map(node_to_pb).collect(),
        version,
        registered_at: Some(Timestamp::from(registered_at)),
    }
}

/// An agent definition as sent (its `version` and `registered_at` are the server's, so ignored).
pub(crate) fn agent_from_pb(def: pb::AgentDefinition) -> AgentDef {
    AgentDef {
        id: def.id,
        description: def.description,
        instructions: def.instructions,
        model: def.model,
        tools: def
            .tools
            .into_iter()
            .map(|t| ToolDef {
                name: t.name,
                description: t.description,
                parameters: t.parameters.map(pb_to_json),
                task: t.task,
                requires_approval: t.requires_approval,
            })
            .collect(),
        max_steps: def.max_steps,
    }
}

/// A registered agent, with its version and registration time.
pub(crate) fn agent_to_pb(def: AgentDef, version: u32, registered_at: SystemTime) -> pb::AgentDefinition {
    pb::AgentDefinition {
        id: def.id,
        description: def.description,
        instructions: def.instructions,
        model: def.model,
        tools: def
            .tools
            .into_iter()
            .map(|t| pb::ToolDefinition {
                name: t.name,
                description: t.description,
                parameters: t.parameters.as_ref().map(json_to_pb),
                task: t.task,
                requires_approval: t.requires_approval,
            })
            .collect(),
        max_steps: def.max_steps,
        version,
        registered_at: Some(Timestamp::from(registered_at)),
    }
}

fn node_from_pb(path: &str, node: pb::Node) -> In<Node> {
    use pb::node::Node as N;
    let inner = |path: String, node: Option<pb::Node>| -> In<Option<Box<Node>>> {
        node.map(|n| node_from_pb(&path, n).map(Box::new)).transpose()
    };
    Ok(match node.node {
        None => {
            return Err(invalid_field(
                path,
                "an empty node; set one of step, parallel, branch, dowhile, dountil, foreach, sleep, map, workflow",
            ));
        }
        Some(N::Step(s)) => Node::Step(step_from_pb(&format!("{path}.step"), s)?),
        Some(N::Parallel(p)) => Node::Parallel(ParallelNode {
            nodes: p
                .nodes
                .into_iter()
                .enumerate()
                .map(|(i, n)| node_from_pb(&format!("{path}.parallel.nodes[{i}]"), n))
                .collect::<In<_>>()?,
        }),
        Some(N::Branch(b)) => Node::Branch(BranchNode {
            cases: b
                .cases
                .into_iter()
                .enumerate()
                .map(|(i, c)| {
                    Ok(BranchCase {
                        when: c.when.map(condition_from_pb),
                        node: inner(format!("{path}.branch.cases[{i}].node"), c.node)?,
                    })
                })
                .collect::<In<_>>()?,
        }),
        Some(N::Dowhile(l)) => Node::Dowhile(loop_from_pb(&format!("{path}.dowhile"), *l)?),
        Some(N::Dountil(l)) => Node::Dountil(loop_from_pb(&format!("{path}.dountil"), *l)?),
        Some(N::Foreach(f)) => Node::Foreach(ForeachNode {
            node: inner(format!("{path}.foreach.node"), f.node.map(|n| *n))?,
            concurrency: f.concurrency,
        }),
        Some(N::Sleep(s)) => Node::Sleep(SleepNode { id: s.id, ms: s.ms }),
        Some(N::Map(m)) => {
            Node::Map(MapNode { id: m.id, fields: sources_from_pb(&format!("{path}.map.fields"), m.fields)? })
        }
        Some(N::Workflow(w)) => Node::Workflow(WorkflowNode { id: w.id }),
    })
}

fn loop_from_pb(path: &str, l: pb::LoopNode) -> In<LoopNode> {
    Ok(LoopNode {
        node: l.node.map(|n| node_from_pb(&format!("{path}.node"), *n).map(Box::new)).transpose()?,
        condition: l.condition.map(condition_from_pb),
        max_iterations: l.max_iterations,
    })
}

fn step_from_pb(path: &str, s: pb::StepNode) -> In<StepNode> {
    let retries = match s.retries {
        None => None,
        Some(r) => {
            let delay = std::time::Duration::try_from(r.delay.unwrap_or_default())
                .map_err(|_| invalid_field(&format!("{path}.retries.delay"), "must not be negative"))?;
            let delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
            Some(Retries { attempts: r.attempts, delay_ms })
        }
    };
    Ok(StepNode {
        id: s.id,
        task: s.task,
        description: s.description,
        retries,
        input: sources_from_pb(&format!("{path}.input"), s.input)?,
        resume_schema: s.resume_schema.map(pb_to_json),
    })
}

fn sources_from_pb(path: &str, fields: std::collections::HashMap<String, pb::Source>) -> In<BTreeMap<String, Source>> {
    use pb::source::Source as S;
    fields
        .into_iter()
        .map(|(name, source)| {
            let source = match source.source {
                Some(S::Path(p)) => Source::Path(p),
                Some(S::RunInput(p)) => Source::RunInput(p),
                Some(S::Value(v)) => Source::Value(pb_to_json(v)),
                None => {
                    return Err(invalid_field(
                        &format!("{path}.{name}"),
                        "an empty source; set path, runInput or value",
                    ));
                }
            };
            Ok((name, source))
        })
        .collect()
}

fn condition_from_pb(c: pb::Condition) -> Condition {
    use pb::condition::Test as T;
    Condition {
        path: c.path,
        test: c.test.map(|t| match t {
            T::Equals(v) => Test::Equals(pb_to_json(v)),
            T::NotEquals(v) => Test::NotEquals(pb_to_json(v)),
            T::GreaterThan(n) => Test::GreaterThan(n),
            T::GreaterOrEqual(n) => Test::GreaterOrEqual(n),
            T::LessThan(n) => Test::LessThan(n),
            T::LessOrEqual(n) => Test::LessOrEqual(n),
            T::Exists(b) => Test::Exists(b),
        }),
        all: c.all.into_iter().map(condition_from_pb).collect(),
        any: c.any.into_iter().map(condition_from_pb).collect(),
        not: c.not,
    }
}

fn node_to_pb(node: Node) -> pb::Node {
    use pb::node::Node as N;
    let inner = |n: Option<Box<Node>>| n.map(|n| node_to_pb(*n));
    let node = match node {
        Node::Step(s) => N::Step(step_to_pb(s)),
        Node::Parallel(p) => N::Parallel(pb::ParallelNode { nodes: p.nodes.into_iter().map(node_to_pb).collect() }),
        Node::Branch(b) => N::Branch(pb::BranchNode {
            cases: b
                .cases
                .into_iter()
                .map(|c| pb::BranchCase { when: c.when.map(condition_to_pb), node: inner(c.node) })
                .collect(),
        }),
        Node::Dowhile(l) => N::Dowhile(Box::new(loop_to_pb(l))),
        Node::Dountil(l) => N::Dountil(Box::new(loop_to_pb(l))),
        Node::Foreach(f) => {
            N::Foreach(Box::new(pb::ForeachNode { node: inner(f.node).map(Box::new), concurrency: f.concurrency }))
        }
        Node::Sleep(s) => N::Sleep(pb::SleepNode { id: s.id, ms: s.ms }),
        Node::Map(m) => N::Map(pb::MapNode { id: m.id, fields: sources_to_pb(m.fields) }),
        Node::Workflow(w) => N::Workflow(pb::WorkflowNode { id: w.id }),
    };
    pb::Node { node: Some(node) }
}

fn loop_to_pb(l: LoopNode) -> pb::LoopNode {
    pb::LoopNode {
        node: l.node.map(|n| Box::new(node_to_pb(*n))),
        condition: l.condition.map(condition_to_pb),
        max_iterations: l.max_iterations,
    }
}

fn step_to_pb(s: StepNode) -> pb::StepNode {
    pb::StepNode {
        id: s.id,
        task: s.task,
        description: s.description,
        retries: s.retries.map(|r| pb::Retries {
            attempts: r.attempts,
            // Whole milliseconds always fit a protobuf Duration.
            delay: prost_types::Duration::try_from(std::time::Duration::from_millis(r.delay_ms)).ok(),
        }),
        input: sources_to_pb(s.input),
        resume_schema: s.resume_schema.as_ref().map(json_to_pb),
    }
}

fn sources_to_pb(fields: BTreeMap<String, Source>) -> std::collections::HashMap<String, pb::Source> {
    use pb::source::Source as S;
    fields
        .into_iter()
        .map(|(name, source)| {
            let source = match source {
                Source::Path(p) => S::Path(p),
                Source::RunInput(p) => S::RunInput(p),
                Source::Value(v) => S::Value(json_to_pb(&v)),
            };
            (name, pb::Source { source: Some(source) })
        })
        .collect()
}

fn condition_to_pb(c: Condition) -> pb::Condition {
    use pb::condition::Test as T;
    pb::Condition {
        path: c.path,
        test: c.test.map(|t| match t {
            Test::Equals(v) => T::Equals(json_to_pb(&v)),
            Test::NotEquals(v) => T::NotEquals(json_to_pb(&v)),
            Test::GreaterThan(n) => T::GreaterThan(n),
            Test::GreaterOrEqual(n) => T::GreaterOrEqual(n),
            Test::LessThan(n) => T::LessThan(n),
            Test::LessOrEqual(n) => T::LessOrEqual(n),
            Test::Exists(b) => T::Exists(b),
        }),
        all: c.all.into_iter().map(condition_to_pb).collect(),
        any: c.any.into_iter().map(condition_to_pb).collect(),
        not: c.not,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// Every node kind, condition test and source survives definition → protobuf → definition.
    #[test]
    fn every_node_converts_both_ways() {
        let def: WorkflowDef = serde_json::from_value(json!({
            "id": "all", "description": "d", "inputSchema": {"type": "object"}, "outputSchema": {"type": "object"},
            "steps": [
                {"step": {"id": "a", "task": "t", "description": "x", "retries": {"attempts": 2, "delayMs": 1500},
                          "input": {"p": {"path": "a.b"}, "r": {"runInput": "c"}, "v": {"value": [1, "x"]}},
                          "resumeSchema": {"type": "object"}}},
                {"parallel": {"nodes": [{"step": {"id": "b", "task": "t"}}]}},
                {"branch": {"cases": [
                    {"when": {"path": "n", "equals": null}, "node": {"step": {"id": "c", "task": "t"}}},
                    {"when": {"path": "n", "notEquals": 1, "not": true}, "node": {"step": {"id": "d", "task": "t"}}},
                    {"node": {"step": {"id": "e", "task": "t"}}}]}},
                {"dowhile": {"node": {"step": {"id": "f", "task": "t"}}, "maxIterations": 4,
                             "condition": {"all": [{"path": "n", "greaterThan": 1.5}, {"path": "n", "lessThan": 9}],
                                           "any": [{"path": "m", "greaterOrEqual": 0}, {"path": "m", "lessOrEqual": 0}]}}},
                {"dountil": {"node": {"step": {"id": "g", "task": "t"}}, "condition": {"path": "z", "exists": true}}},
                {"foreach": {"node": {"step": {"id": "h", "task": "t"}}, "concurrency": 3}},
                {"sleep": {"id": "i", "ms": 5}},
                {"map": {"id": "j", "fields": {"k": {"path": ""}}}},
                {"workflow": {"id": "other"}}]
        }))
        .expect("a definition");
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_123);
        let pb = workflow_to_pb(def.clone(), 7, at);
        assert_eq!((pb.version, pb.registered_at), (7, Some(Timestamp::from(at))));
        let delay = match &pb.steps[0].node {
            Some(pb::node::Node::Step(s)) => s.retries.and_then(|r| r.delay),
            _ => None,
        };
        assert_eq!(delay, Some(prost_types::Duration { seconds: 1, nanos: 500_000_000 }));
        assert_eq!(workflow_from_pb(pb).expect("converts back"), def);
    }

    #[test]
    fn what_the_types_cannot_hold_is_refused_naming_the_field() {
        let empty_source = pb::WorkflowDefinition {
            id: "x".into(),
            steps: vec![pb::Node {
                node: Some(pb::node::Node::Map(pb::MapNode {
                    id: "m".into(),
                    fields: [("f".to_owned(), pb::Source { source: None })].into_iter().collect(),
                })),
            }],
            ..Default::default()
        };
        let status = workflow_from_pb(empty_source).expect_err("an empty source");
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(
            status.message().starts_with("definition.steps[0].map.fields.f: an empty source"),
            "{}",
            status.message()
        );
        let negative = pb::WorkflowDefinition {
            id: "x".into(),
            steps: vec![pb::Node {
                node: Some(pb::node::Node::Step(pb::StepNode {
                    id: "s".into(),
                    task: "t".into(),
                    retries: Some(pb::Retries {
                        attempts: 1,
                        delay: Some(prost_types::Duration { seconds: -1, nanos: 0 }),
                    }),
                    ..Default::default()
                })),
            }],
            ..Default::default()
        };
        let status = workflow_from_pb(negative).expect_err("a negative delay");
        assert!(status.message().starts_with("definition.steps[0].step.retries.delay: must not be negative"));
    }
}
