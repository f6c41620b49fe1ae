//! Every check of a definition that can be made without the server's catalog. The first problem found is reported,
//! with the path of the field at fault in the definition's JSON form (`steps[2].foreach.node.step.task`).

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;

use super::{
    Condition, DefinitionError, MAX_CONCURRENCY, MAX_ID_LEN, MAX_ITERATIONS, MAX_RETRIES, MAX_RETRY_DELAY_MS,
    MAX_SLEEP_MS, Node, Source, StepNode, Test, WorkflowDef, data,
};
use crate::engine::schema::Schema;

type Checked = Result<(), DefinitionError>;

/// Checks `def`: ids, required fields, limits, schemas, paths, and that only `step` nodes stand where the engine
/// takes a step (inside parallel, branch, loops and foreach).
pub(crate) fn validate(def: &WorkflowDef) -> Checked {
    check_definition_id("id", &def.id)?;
    schema("inputSchema", def.input_schema.as_ref())?;
    schema("outputSchema", def.output_schema.as_ref())?;
    if def.steps.is_empty() {
        return Err(DefinitionError::new("steps", "must not be empty: a workflow needs at least one node"));
    }
    let mut ids = HashMap::new();
    for (i, node) in def.steps.iter().enumerate() {
        check_node(&format!("steps[{i}]"), node, &mut ids)?;
    }
    Ok(())
}

/// A definition id: what callers pass as `workflow_id` (or `agent_id`).
pub(crate) fn check_definition_id(path: &str, id: &str) -> Checked {
    // No dots: a workflow's id names its steps when it is nested (`<id>.<step>`).
    check_name(path, id, MAX_ID_LEN, "; use letters, digits, _ and -")
}

/// An id of at most `max` letters, digits, `_` and `-`; `hint` ends the message about a bad character.
pub(super) fn check_name(path: &str, id: &str, max: usize, hint: &str) -> Checked {
    if id.is_empty() {
        return Err(DefinitionError::new(path, "must not be empty"));
    }
    if id.len() > max {
        return Err(DefinitionError::new(path, format!("{} characters long; at most {max}", id.len())));
    }
    if let Some(bad) = id.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))) {
        return Err(DefinitionError::new(path, format!("character {bad:?} is not allowed{hint}")));
    }
    Ok(())
}

/// A node id: names the step in events and resume paths, where dots separate nesting.
fn check_node_id(path: &str, id: &str, ids: &mut HashMap<String, String>) -> Checked {
    check_name(path, id, MAX_ID_LEN, " in a step id; use letters, digits, _ and - (dots separate nested steps)")?;
    if let Some(first) = ids.get(id) {
        return Err(DefinitionError::new(
            path,
            format!("'{id}' is already the id of {first}; ids must be unique within the workflow"),
        ));
    }
    ids.insert(id.to_owned(), path.trim_end_matches(".id").to_owned());
    Ok(())
}

fn schema(path: &str, schema: Option<&Value>) -> Checked {
    match schema {
        Some(s) => Schema::compile(s.clone())
            .map(drop)
            .map_err(|e| DefinitionError::new(path, format!("not a valid JSON Schema: {e}"))),
        None => Ok(()),
    }
}

fn check_node(path: &str, node: &Node, ids: &mut HashMap<String, String>) -> Checked {
    let here = format!("{path}.{}", node.kind());
    match node {
        Node::Step(step) => check_step(&here, step, ids),
        Node::Parallel(p) => {
            if p.nodes.is_empty() {
                return Err(DefinitionError::new(format!("{here}.nodes"), "must not be empty"));
            }
            for (i, node) in p.nodes.iter().enumerate() {
                inner_step(&format!("{here}.nodes[{i}]"), Some(node), "parallel", ids)?;
            }
            Ok(())
        }
        Node::Branch(b) => {
            if b.cases.is_empty() {
                return Err(DefinitionError::new(format!("{here}.cases"), "must not be empty"));
            }
            for (i, case) in b.cases.iter().enumerate() {
                let case_path = format!("{here}.cases[{i}]");
                if let Some(when) = &case.when {
                    check_condition(&format!("{case_path}.when"), when, false)?;
                }
                inner_step(&format!("{case_path}.node"), case.node.as_deref(), "branch", ids)?;
            }
            Ok(())
        }
        Node::Dowhile(l) | Node::Dountil(l) => {
            inner_step(&format!("{here}.node"), l.node.as_deref(), node.kind(), ids)?;
            match &l.condition {
                Some(cond) => check_condition(&format!("{here}.condition"), cond, true)?,
                None => {
                    return Err(DefinitionError::new(
                        format!("{here}.condition"),
                        "required: the condition decides whether the loop goes on",
                    ));
                }
            }
            if l.max_iterations > MAX_ITERATIONS {
                return Err(DefinitionError::new(
                    format!("{here}.maxIterations"),
                    format!("{} is more than the limit of {MAX_ITERATIONS}", l.max_iterations),
                ));
            }
            Ok(())
        }
        Node::Foreach(f) => {
            inner_step(&format!("{here}.node"), f.node.as_deref(), "foreach", ids)?;
            if f.concurrency > MAX_CONCURRENCY {
                return Err(DefinitionError::new(
                    format!("{here}.concurrency"),
                    format!("{} is more than the limit of {MAX_CONCURRENCY}", f.concurrency),
                ));
            }
            Ok(())
        }
        Node::Sleep(s) => {
            check_node_id(&format!("{here}.id"), &s.id, ids)?;
            if s.ms > MAX_SLEEP_MS {
                return Err(DefinitionError::new(
                    format!("{here}.ms"),
                    format!("{} ms is longer than the limit of {MAX_SLEEP_MS} ms (31 days)", s.ms),
                ));
            }
            Ok(())
        }
        Node::Map(m) => {
            check_node_id(&format!("{here}.id"), &m.id, ids)?;
            if m.fields.is_empty() {
                return Err(DefinitionError::new(
                    format!("{here}.fields"),
                    "must not be empty: name the fields to build",
                ));
            }
            check_sources(&format!("{here}.fields"), &m.fields)
        }
        Node::Workflow(w) => {
            if w.id.contains('.') {
                return Err(DefinitionError::new(
                    format!("{here}.id"),
                    format!(
                        "'{}' contains '.', which separates nested step paths: a nested workflow's id names its steps \
                         (`<id>.<step>`); nest a workflow whose id has no dot",
                        w.id
                    ),
                ));
            }
            check_node_id(&format!("{here}.id"), &w.id, ids)
        }
    }
}

/// Where the engine takes a step (parallel, branch, loops, foreach), only a `step` node can stand.
fn inner_step(path: &str, node: Option<&Node>, within: &str, ids: &mut HashMap<String, String>) -> Checked {
    match node {
        Some(Node::Step(step)) => check_step(&format!("{path}.step"), step, ids),
        Some(other) => Err(DefinitionError::new(
            path,
            format!(
                "only a step node can stand inside {within}, got {}; make it a step whose worker does that work, or \
                 move the {} out to the workflow's steps",
                other.kind(),
                other.kind()
            ),
        )),
        None => Err(DefinitionError::new(path, format!("required: the step node {within} runs"))),
    }
}

fn check_step(path: &str, step: &StepNode, ids: &mut HashMap<String, String>) -> Checked {
    check_node_id(&format!("{path}.id"), &step.id, ids)?;
    check_task(&format!("{path}.task"), &step.task)?;
    if let Some(retries) = &step.retries {
        if retries.attempts > MAX_RETRIES {
            return Err(DefinitionError::new(
                format!("{path}.retries.attempts"),
                format!("{} is more than the limit of {MAX_RETRIES}", retries.attempts),
            ));
        }
        if retries.delay_ms > MAX_RETRY_DELAY_MS {
            return Err(DefinitionError::new(format!("{path}.retries.delay"), "longer than the limit of one hour"));
        }
    }
    check_sources(&format!("{path}.input"), &step.input)?;
    schema(&format!("{path}.resumeSchema"), step.resume_schema.as_ref())
}

/// A task type, as workers name what they serve (Hello.task_types).
pub(super) fn check_task(path: &str, task: &str) -> Checked {
    if task.trim().is_empty() {
        return Err(DefinitionError::new(
            path,
            "must not be empty: name the task type a worker serves (Hello.task_types)",
        ));
    }
    if task.len() > MAX_ID_LEN {
        return Err(DefinitionError::new(path, format!("{} characters long; at most {MAX_ID_LEN}", task.len())));
    }
    Ok(())
}

fn check_sources(path: &str, fields: &BTreeMap<String, Source>) -> Checked {
    for (name, source) in fields {
        if name.is_empty() {
            return Err(DefinitionError::new(path, "a field name must not be empty"));
        }
        match source {
            Source::Path(p) => {
                data::check_path(p).map_err(|e| DefinitionError::new(format!("{path}.{name}.path"), e))?
            }
            Source::RunInput(p) => {
                data::check_path(p).map_err(|e| DefinitionError::new(format!("{path}.{name}.runInput"), e))?;
            }
            Source::Value(_) => {}
        }
    }
    Ok(())
}

fn check_condition(path: &str, cond: &Condition, in_loop: bool) -> Checked {
    if cond.path == data::ITERATION && !in_loop {
        return Err(DefinitionError::new(
            format!("{path}.path"),
            format!("{:?} is the iteration of a loop; only a loop condition has one", data::ITERATION),
        ));
    }
    if cond.path != data::ITERATION {
        data::check_path(&cond.path).map_err(|e| DefinitionError::new(format!("{path}.path"), e))?;
    }
    let number = match &cond.test {
        Some(Test::GreaterThan(n)) => Some(("greaterThan", *n)),
        Some(Test::GreaterOrEqual(n)) => Some(("greaterOrEqual", *n)),
        Some(Test::LessThan(n)) => Some(("lessThan", *n)),
        Some(Test::LessOrEqual(n)) => Some(("lessOrEqual", *n)),
        _ => None,
    };
    if let Some((field, n)) = number.filter(|(_, n)| !n.is_finite()) {
        return Err(DefinitionError::new(format!("{path}.{field}"), format!("{n} is not a finite number")));
    }
    for (i, c) in cond.all.iter().enumerate() {
        check_condition(&format!("{path}.all[{i}]"), c, in_loop)?;
    }
    for (i, c) in cond.any.iter().enumerate() {
        check_condition(&format!("{path}.any[{i}]"), c, in_loop)?;
    }
    Ok(())
}
