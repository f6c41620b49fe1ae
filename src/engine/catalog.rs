//! The set of workflows (and agents and networks, run as workflows) a server can run, looked up by id.

use std::{collections::BTreeMap, sync::Arc};

use super::workflow::Workflow;

/// Workflows by id. Cloning is cheap enough to hand a copy to each service: the workflows themselves are shared.
#[derive(Clone, Default, Debug)]
pub struct WorkflowCatalog {
    workflows: BTreeMap<Arc<str>, Arc<Workflow>>,
}

impl WorkflowCatalog {
    /// An empty catalog.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `workflow` (or an agent or network as a workflow), replacing any of the same id and kind.
    ///
    /// # Panics
    /// If the id is taken by another kind: ids are one namespace, so that a run's `workflow_id` is unambiguous.
    pub fn register(&mut self, workflow: Arc<Workflow>) {
        if let Some(existing) = self.workflows.get(workflow.id()) {
            assert!(
                existing.kind() == workflow.kind(),
                "id '{}' is already a {}; it cannot also name a {}",
                workflow.id(),
                existing.kind().as_str(),
                workflow.kind().as_str()
            );
        }
        self.workflows.insert(Arc::clone(workflow.id()), workflow);
    }

    /// The workflow (or agent or network) with id `id`.
    pub fn get(&self, id: &str) -> Option<Arc<Workflow>> {
        self.workflows.get(id).cloned()
    }

    /// All workflows, sorted by id.
    pub fn list(&self) -> Vec<Arc<Workflow>> {
        self.workflows.values().cloned().collect()
    }
}
