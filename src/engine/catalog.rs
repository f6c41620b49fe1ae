//! The set of workflows a server can run, looked up by id.

use std::{collections::BTreeMap, sync::Arc};

use super::workflow::Workflow;

/// Workflows by id. Cloning is cheap enough to hand a copy to each service: the workflows themselves are shared.
#[derive(Clone, Default, Debug)]
pub struct WorkflowCatalog {
    workflows: BTreeMap<Arc<str>, Arc<Workflow>>,
}

impl WorkflowCatalog {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `workflow`, replacing any workflow with the same id.
    pub fn register(&mut self, workflow: Arc<Workflow>) {
        self.workflows.insert(Arc::clone(workflow.id()), workflow);
    }

    pub fn get(&self, id: &str) -> Option<Arc<Workflow>> {
        self.workflows.get(id).cloned()
    }

    /// All workflows, sorted by id.
    pub fn list(&self) -> Vec<Arc<Workflow>> {
        self.workflows.values().cloned().collect()
    }
}
