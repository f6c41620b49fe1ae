//! Definition → engine workflow: each `step` node becomes a remote step of the server's [`WorkerHub`], the other
//! nodes the builder's control flow, with conditions and mappings evaluated on paths (`data.rs`).

use std::{sync::Arc, time::Duration};

use serde_json::Value;

use super::{
    AgentDef, Condition, DEFAULT_MAX_ITERATIONS, DefinitionError, Node, StepNode, WorkflowDef, agent,
    data::{build, holds},
    validate,
};
use crate::{
    engine::{
        RunKind, Step, StepContext, StepError, StepOutcome, Workflow,
        workflow::{WorkflowBuilder, when},
    },
    model::ModelProvider,
    registry::{DefinitionCompiler, InvalidDefinition},
    worker::{InputFn, WorkerHub},
};

/// Compiles definitions into workflows whose steps (and agents' tools) the workers of `hub` run; agents call
/// `model`, the server's.
#[derive(Clone)]
pub(crate) struct Compiler {
    hub: Arc<WorkerHub>,
    model: Arc<dyn ModelProvider>,
}

impl Compiler {
    pub(crate) fn new(hub: Arc<WorkerHub>, model: Arc<dyn ModelProvider>) -> Self {
        Self { hub, model }
    }

    /// Checks `def` and compiles it; `resolve` finds the workflows its `workflow` nodes nest (the server's current
    /// ones: a nested workflow is bound when the definition is registered).
    pub(crate) fn workflow(
        &self,
        def: &WorkflowDef,
        resolve: &dyn Fn(&str) -> Option<Arc<Workflow>>,
    ) -> Result<Arc<Workflow>, DefinitionError> {
        validate(def)?;
        let mut builder = Workflow::builder(def.id.as_str()).description(def.description.as_str());
        // Validated above: these compile.
        if let Some(schema) = &def.input_schema {
            builder = builder.input_schema(schema.clone());
        }
        if let Some(schema) = &def.output_schema {
            builder = builder.output_schema(schema.clone());
        }
        for (i, node) in def.steps.iter().enumerate() {
            builder = self.node(builder, &format!("steps[{i}].{}", node.kind()), node, resolve)?;
        }
        Ok(builder.commit())
    }

    fn node(
        &self,
        builder: WorkflowBuilder,
        path: &str,
        node: &Node,
        resolve: &dyn Fn(&str) -> Option<Arc<Workflow>>,
    ) -> Result<WorkflowBuilder, DefinitionError> {
        Ok(match node {
            Node::Step(step) => builder.then(self.step(step)),
            Node::Parallel(p) => builder.parallel(p.nodes.iter().filter_map(|n| self.inner(Some(n))).collect()),
            Node::Branch(b) => builder.branch(
                b.cases
                    .iter()
                    .filter_map(|case| {
                        let step = self.inner(case.node.as_deref())?;
                        let cond = case.when.clone();
                        Some((when(move |v| cond.as_ref().is_none_or(|c| holds(c, v, None))), step))
                    })
                    .collect(),
            ),
            Node::Dowhile(l) | Node::Dountil(l) => {
                let until = matches!(node, Node::Dountil(_));
                let (Some(step), Some(cond)) = (self.inner(l.node.as_deref()), l.condition.clone()) else {
                    return Err(DefinitionError::new(path, "a loop needs a step node and a condition"));
                };
                let max = if l.max_iterations == 0 { DEFAULT_MAX_ITERATIONS } else { l.max_iterations };
                let cond = Arc::new(cond);
                let step = limit_iterations(step, Arc::clone(&cond), until, max);
                if until {
                    builder.dountil(step, move |v, i| holds(&cond, v, Some(i)))
                } else {
                    builder.dowhile(step, move |v, i| holds(&cond, v, Some(i)))
                }
            }
            Node::Foreach(f) => {
                let Some(step) = self.inner(f.node.as_deref()) else {
                    return Err(DefinitionError::new(path, "a foreach needs a step node"));
                };
                builder.foreach(step, usize::try_from(f.concurrency.max(1)).unwrap_or(1))
            }
            Node::Sleep(s) => builder.sleep(s.id.as_str(), Duration::from_millis(s.ms)),
            Node::Map(m) => {
                let fields = m.fields.clone();
                builder.map(m.id.as_str(), move |input, run_input| build(&fields, input, run_input))
            }
            Node::Workflow(w) => match resolve(&w.id) {
                Some(child) if child.kind() == RunKind::Workflow => builder.then_workflow(child),
                Some(child) => {
                    return Err(DefinitionError::new(
                        format!("{path}.id"),
                        format!(
                            "'{}' is an {}, not a workflow; only workflows can be nested",
                            w.id,
                            child.kind().as_str()
                        ),
                    ));
                }
                None => {
                    return Err(DefinitionError {
                        path: format!("{path}.id"),
                        message: format!(
                            "no workflow '{}' on this server; register it first (ListWorkflows lists what there is)",
                            w.id
                        ),
                        missing: true,
                    });
                }
            },
        })
    }

    /// The step of a node where only a step can stand (validated).
    fn inner(&self, node: Option<&Node>) -> Option<Step> {
        match node {
            Some(Node::Step(step)) => Some(self.step(step)),
            _ => None,
        }
    }

    fn step(&self, node: &StepNode) -> Step {
        let input: Option<InputFn> = (!node.input.is_empty()).then(|| {
            let fields = node.input.clone();
            Arc::new(move |data: &Value, run_input: &Value| build(&fields, data, run_input)) as InputFn
        });
        let mut step = self
            .hub
            .step_with_input(node.id.as_str(), node.task.as_str(), input)
            .description(node.description.as_str());
        if let Some(schema) = &node.resume_schema {
            step = step.resume_schema(schema.clone());
        }
        if let Some(retries) = &node.retries {
            // The definition counts retries after the first attempt; the engine counts attempts.
            step = step.retries(retries.attempts.saturating_add(1), Duration::from_millis(retries.delay_ms));
        }
        step
    }
}

/// Fails a loop's step, without retries, when its iteration `max` would be followed by another: the run fails
/// saying so instead of looping on.
fn limit_iterations(mut step: Step, cond: Arc<Condition>, until: bool, max: u32) -> Step {
    let inner = Arc::clone(&step.func);
    let id = Arc::clone(&step.id);
    step.func = Arc::new(move |ctx: StepContext| {
        let (inner, cond, id) = (Arc::clone(&inner), Arc::clone(&cond), Arc::clone(&id));
        Box::pin(async move {
            let iteration = ctx.iteration();
            let outcome = inner(ctx).await?;
            // Only the last allowed iteration needs the condition here (the loop itself evaluates it anyway).
            if iteration >= max
                && let StepOutcome::Done(output) = &outcome
                && holds(&cond, output, Some(iteration)) != until
            {
                let word = if until { "until" } else { "while" };
                return Err(StepError::new(format!(
                    "loop '{id}' reached its maxIterations ({max}) and its {word}-condition still asks for \
                     another iteration; raise maxIterations or check the condition"
                ))
                .non_retryable());
            }
            Ok(outcome)
        })
    });
    step
}

impl DefinitionCompiler for Compiler {
    fn compile(
        &self,
        kind: RunKind,
        body: &Value,
        resolve: &dyn Fn(&str) -> Option<Arc<Workflow>>,
    ) -> Result<Arc<Workflow>, InvalidDefinition> {
        let invalid = |e: DefinitionError| InvalidDefinition { path: e.path, reason: e.message, missing: e.missing };
        match kind {
            RunKind::Workflow => {
                let def: WorkflowDef = serde_json::from_value(body.clone())
                    .map_err(|e| invalid(DefinitionError::new("", format!("unreadable: {e}"))))?;
                self.workflow(&def, resolve).map_err(invalid)
            }
            RunKind::Agent => {
                let def: AgentDef = serde_json::from_value(body.clone())
                    .map_err(|e| invalid(DefinitionError::new("", format!("unreadable: {e}"))))?;
                agent::compile(&def, &self.model, &self.hub).map_err(invalid)
            }
            other => Err(InvalidDefinition {
                path: String::new(),
                reason: format!("this server does not take {} definitions", other.as_str()),
                missing: false,
            }),
        }
    }
}
