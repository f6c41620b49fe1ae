//! What the registry can run, and workflows (or agents) registered as data while it runs.
//!
//! The catalog holds the runnables the server was built with (fixed) and the latest compiled version of each
//! registered definition. A definition is opaque JSON here: the [`DefinitionCompiler`] the registry is handed
//! (the `definition` module's, made by the server) checks and compiles it, so the registry knows neither the
//! format nor workers. Every version is kept (in the store too): a run keeps the version it started with, across
//! restarts, while new runs get the latest.

use std::{
    collections::{BTreeMap, HashSet},
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde_json::Value;

use super::{RegistryError, RunRegistry};
use crate::{
    engine::{RunKind, Workflow, WorkflowCatalog},
    store::{DefinitionRecord, Write},
};

/// Checks and compiles definitions of any kind the server takes (workflows, agents) into runnable workflows.
pub trait DefinitionCompiler: Send + Sync + 'static {
    /// Compiles `body`, a definition of `kind`, into a runnable whose id is the definition's. `resolve` finds what
    /// the definition refers to by id (the server's current workflows): references are bound now, at
    /// registration.
    fn compile(
        &self,
        kind: RunKind,
        body: &Value,
        resolve: &dyn Fn(&str) -> Option<Arc<Workflow>>,
    ) -> Result<Arc<Workflow>, InvalidDefinition>;
}

/// Why a definition cannot be compiled: the field at fault and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidDefinition {
    /// The field's path in the definition, e.g. `steps[2].foreach.node.step.task`.
    pub path: String,
    /// What is wrong, and what to do.
    pub reason: String,
    /// It refers to something the server does not have (FAILED_PRECONDITION rather than INVALID_ARGUMENT).
    pub missing: bool,
}

/// One registered version of a definition, as GetWorkflowDefinition shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Definition {
    /// What it defines.
    pub kind: RunKind,
    /// Its id.
    pub id: String,
    /// 1, 2, ...
    pub version: u32,
    /// The definition, in its compiler's JSON form.
    pub body: Value,
    /// When it was registered.
    pub registered_at: SystemTime,
}

/// A registered version and what it compiled into (`None`: it no longer compiles after a restart, e.g. a nested
/// workflow is gone; its runs are not served).
#[derive(Debug, Clone)]
struct Version {
    definition: Definition,
    workflow: Option<Arc<Workflow>>,
}

/// Everything runs can be started of, by id; ids are one namespace across kinds.
#[derive(Debug, Default)]
pub(super) struct Catalog {
    /// Runnable by id, with its version (0: fixed).
    current: BTreeMap<Arc<str>, (Arc<Workflow>, u32)>,
    /// Ids of the runnables the server was built with: not to be registered over.
    fixed: HashSet<Arc<str>>,
    /// Every version of every registered definition, by id.
    registered: BTreeMap<String, Vec<Version>>,
}

impl Catalog {
    pub(super) fn new(fixed: &WorkflowCatalog) -> Self {
        let current: BTreeMap<Arc<str>, (Arc<Workflow>, u32)> =
            fixed.list().into_iter().map(|wf| (Arc::clone(wf.id()), (wf, 0))).collect();
        let fixed = current.keys().cloned().collect();
        Self { current, fixed, registered: BTreeMap::new() }
    }

    /// The runnable (latest version) with this id, and its version.
    pub(super) fn get(&self, id: &str) -> Option<(Arc<Workflow>, u32)> {
        self.current.get(id).cloned()
    }

    /// A run's workflow as stored: `version` 0 is a fixed one, any other that registered version.
    pub(super) fn version(&self, id: &str, version: u32) -> Option<Arc<Workflow>> {
        if version == 0 {
            return self.fixed.contains(id).then(|| self.current.get(id).map(|(wf, _)| Arc::clone(wf))).flatten();
        }
        let index = usize::try_from(version - 1).ok()?;
        self.registered.get(id)?.get(index)?.workflow.clone()
    }

    /// Everything, sorted by id, with versions.
    pub(super) fn list(&self) -> Vec<(Arc<Workflow>, u32)> {
        self.current.values().cloned().collect()
    }

    /// A stored version, compiled again at start (in registration order, so what it nests resolves as it did).
    pub(super) fn restore(&mut self, compiler: Option<&dyn DefinitionCompiler>, record: DefinitionRecord) {
        let Some(kind) = parse_kind(&record.kind) else {
            tracing::warn!(kind = %record.kind, id = %record.id, "stored definition of an unknown kind; ignored");
            return;
        };
        let workflow = match compiler {
            Some(compiler) => match compiler.compile(kind, &record.body, &|id| self.get(id).map(|(wf, _)| wf)) {
                Ok(wf) if **wf.id() == *record.id => Some(wf),
                Ok(wf) => {
                    tracing::warn!(id = %record.id, compiled = %wf.id(), "stored definition compiles to another id; not served");
                    None
                }
                Err(e) => {
                    tracing::warn!(id = %record.id, version = record.version, path = %e.path, reason = %e.reason, "stored definition no longer compiles; its runs are not served");
                    None
                }
            },
            None => None,
        };
        if self.fixed.contains(record.id.as_str()) {
            tracing::warn!(id = %record.id, "a registered definition has the id of a built-in runnable now; the built-in one is served");
        } else if let Some(wf) = &workflow {
            self.current.insert(Arc::clone(wf.id()), (Arc::clone(wf), record.version));
        }
        let definition = Definition {
            kind,
            id: record.id.clone(),
            version: record.version,
            body: record.body,
            registered_at: record.registered_at,
        };
        self.registered.entry(record.id).or_default().push(Version { definition, workflow });
    }
}

fn parse_kind(kind: &str) -> Option<RunKind> {
    [RunKind::Workflow, RunKind::Agent, RunKind::Network].into_iter().find(|k| k.as_str() == kind)
}

impl RunRegistry {
    /// Registers a definition of `kind` (JSON as the compiler reads it) as the next version of its id, stored
    /// before it is returned; new runs of the id get it. Blocking (it waits for the store).
    pub fn register_definition(&self, kind: RunKind, body: Value) -> Result<Definition, RegistryError> {
        let Some(compiler) = &self.compiler else {
            return Err(RegistryError::DefinitionsUnsupported);
        };
        // One registration at a time, so versions are numbered and stored in order.
        let _registering = self.registering.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let workflow = compiler
            .compile(kind, &body, &|id| self.catalog().get(id).map(|(wf, _)| wf))
            .map_err(|e| RegistryError::InvalidDefinition { path: e.path, reason: e.reason, missing: e.missing })?;
        let id = workflow.id().to_string();
        let version = {
            let catalog = self.catalog();
            if catalog.fixed.contains(id.as_str()) {
                let existing = catalog.get(&id).map_or(RunKind::Workflow, |(wf, _)| wf.kind());
                return Err(RegistryError::DefinitionIdTaken { id, existing, built_in: true });
            }
            let versions = catalog.registered.get(&id);
            if let Some(other) = versions.and_then(|v| v.last()).filter(|v| v.definition.kind != kind) {
                return Err(RegistryError::DefinitionIdTaken { id, existing: other.definition.kind, built_in: false });
            }
            u32::try_from(versions.map_or(0, Vec::len)).unwrap_or(u32::MAX).saturating_add(1)
        };
        // Whole milliseconds, the precision the store keeps: the same time after a restart.
        let now = self.clock.now();
        let registered_at = match now.duration_since(UNIX_EPOCH) {
            Ok(since) => UNIX_EPOCH + Duration::from_millis(u64::try_from(since.as_millis()).unwrap_or(u64::MAX)),
            Err(_) => now,
        };
        let definition = Definition { kind, id: id.clone(), version, body, registered_at };
        if let Some(store) = &self.store {
            let record = DefinitionRecord {
                kind: kind.as_str().to_owned(),
                id: id.clone(),
                version,
                body: definition.body.clone(),
                registered_at,
            };
            store
                .commit(&[Write::Definition(Box::new(record))])
                .map_err(|e| RegistryError::DefinitionNotStored { id: id.clone(), reason: e.to_string() })?;
        }
        let mut catalog = self.catalog_mut();
        catalog.current.insert(Arc::clone(workflow.id()), (Arc::clone(&workflow), version));
        catalog
            .registered
            .entry(id)
            .or_default()
            .push(Version { definition: definition.clone(), workflow: Some(workflow) });
        tracing::info!(id = %definition.id, version, kind = kind.as_str(), "registered a definition");
        Ok(definition)
    }

    /// A registered definition of `kind`: `version` 0 is the latest.
    pub fn definition(&self, kind: RunKind, id: &str, version: u32) -> Result<Definition, RegistryError> {
        let catalog = self.catalog();
        let versions = catalog.registered.get(id).filter(|v| v.last().is_some_and(|v| v.definition.kind == kind));
        let found = match (versions, version) {
            (Some(v), 0) => v.last(),
            (Some(v), n) => usize::try_from(n - 1).ok().and_then(|i| v.get(i)),
            (None, _) => None,
        };
        found.map(|v| v.definition.clone()).ok_or_else(|| RegistryError::DefinitionNotFound {
            kind,
            id: id.to_owned(),
            version,
            latest: versions.and_then(|v| v.last()).map(|v| v.definition.version),
            built_in: catalog.fixed.contains(id),
        })
    }
}
