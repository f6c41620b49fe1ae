//! What the registry can run, and workflows (or agents) registered as data while it runs.
//!
//! The catalog holds the runnables the server was built with (fixed) and the latest compiled version of each
//! registered definition. A definition is opaque JSON here: the [`DefinitionCompiler`] the registry is handed
//! (the `definition` module's, made by the server) checks and compiles it, so the registry knows neither the
//! format nor workers. Every version is kept (in the store too): a run keeps the version it started with, across
//! restarts, while new runs get the latest.

use std::{
    collections::{BTreeMap, HashMap},
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

/// Everything runs can be started of, by id; ids are one namespace across kinds. The runnables the server was built
/// with are every tenant's; registered definitions are their tenant's alone.
#[derive(Debug, Default)]
pub(super) struct Catalog {
    /// The runnables the server was built with, by id: not to be registered over.
    fixed: BTreeMap<Arc<str>, Arc<Workflow>>,
    /// Each tenant's registered definitions.
    tenants: HashMap<Arc<str>, Registered>,
}

/// One tenant's registered definitions.
#[derive(Debug, Default)]
struct Registered {
    /// The latest version that compiles, by id, with its version.
    current: BTreeMap<Arc<str>, (Arc<Workflow>, u32)>,
    /// Every version of every registered definition, by id.
    versions: BTreeMap<String, Vec<Version>>,
}

impl Catalog {
    pub(super) fn new(fixed: &WorkflowCatalog) -> Self {
        let fixed = fixed.list().into_iter().map(|wf| (Arc::clone(wf.id()), wf)).collect();
        Self { fixed, tenants: HashMap::new() }
    }

    /// The runnable (latest version) with this id for `tenant`, and its version (0: built in).
    pub(super) fn get(&self, tenant: &str, id: &str) -> Option<(Arc<Workflow>, u32)> {
        match self.fixed.get(id) {
            Some(wf) => Some((Arc::clone(wf), 0)),
            None => self.tenants.get(tenant)?.current.get(id).cloned(),
        }
    }

    /// A run's workflow as stored: `version` 0 is a built-in one, any other that registered version of `tenant`.
    pub(super) fn version(&self, tenant: &str, id: &str, version: u32) -> Option<Arc<Workflow>> {
        if version == 0 {
            return self.fixed.get(id).cloned();
        }
        let index = usize::try_from(version - 1).ok()?;
        self.tenants.get(tenant)?.versions.get(id)?.get(index)?.workflow.clone()
    }

    /// What `tenant` can run, sorted by id, with versions.
    pub(super) fn list(&self, tenant: &str) -> Vec<(Arc<Workflow>, u32)> {
        let mut all: BTreeMap<&Arc<str>, (Arc<Workflow>, u32)> =
            self.fixed.iter().map(|(id, wf)| (id, (Arc::clone(wf), 0))).collect();
        if let Some(registered) = self.tenants.get(tenant) {
            all.extend(registered.current.iter().map(|(id, entry)| (id, entry.clone())));
        }
        all.into_values().collect()
    }

    fn is_fixed(&self, id: &str) -> bool {
        self.fixed.contains_key(id)
    }

    /// The versions `tenant` registered of `id`.
    fn versions(&self, tenant: &str, id: &str) -> Option<&Vec<Version>> {
        self.tenants.get(tenant)?.versions.get(id)
    }

    /// Adds a registered version of `tenant`; if it compiled, and `latest`, new runs of its id get it.
    fn add(&mut self, tenant: &str, version: Version, latest: bool) {
        let registered = self.tenants.entry(Arc::from(tenant)).or_default();
        if let Some(wf) = version.workflow.as_ref().filter(|_| latest) {
            registered.current.insert(Arc::clone(wf.id()), (Arc::clone(wf), version.definition.version));
        }
        registered.versions.entry(version.definition.id.clone()).or_default().push(version);
    }

    /// A stored version, compiled again at start (in registration order, so what it nests resolves as it did).
    pub(super) fn restore(&mut self, compiler: Option<&dyn DefinitionCompiler>, record: DefinitionRecord) {
        let Some(kind) = parse_kind(&record.kind) else {
            tracing::warn!(kind = %record.kind, id = %record.id, "stored definition of an unknown kind; ignored");
            return;
        };
        let tenant = record.tenant.as_str();
        let workflow = match compiler {
            Some(compiler) => {
                match compiler.compile(kind, &record.body, &|id| self.get(tenant, id).map(|(wf, _)| wf)) {
                    Ok(wf) if **wf.id() == *record.id => Some(wf),
                    Ok(wf) => {
                        tracing::warn!(id = %record.id, compiled = %wf.id(), "stored definition compiles to another id; not served");
                        None
                    }
                    Err(e) => {
                        tracing::warn!(id = %record.id, version = record.version, path = %e.path, reason = %e.reason, "stored definition no longer compiles; its runs are not served");
                        None
                    }
                }
            }
            None => None,
        };
        let fixed = self.is_fixed(&record.id);
        if fixed {
            tracing::warn!(id = %record.id, "a registered definition has the id of a built-in runnable now; the built-in one is served");
        }
        let definition = Definition {
            kind,
            id: record.id.clone(),
            version: record.version,
            body: record.body,
            registered_at: record.registered_at,
        };
        self.add(&record.tenant, Version { definition, workflow }, !fixed);
    }
}

fn parse_kind(kind: &str) -> Option<RunKind> {
    [RunKind::Workflow, RunKind::Agent, RunKind::Network].into_iter().find(|k| k.as_str() == kind)
}

impl RunRegistry {
    /// Registers a definition of `kind` (JSON as the compiler reads it) as `tenant`'s next version of its id,
    /// stored before it is returned; new runs of the id by that tenant get it. Blocking (it waits for the store).
    pub fn register_definition(&self, tenant: &str, kind: RunKind, body: Value) -> Result<Definition, RegistryError> {
        let Some(compiler) = &self.compiler else {
            return Err(RegistryError::DefinitionsUnsupported);
        };
        // One registration at a time, so versions are numbered and stored in order.
        let _registering = self.registering.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let workflow = compiler
            .compile(kind, &body, &|id| self.catalog().get(tenant, id).map(|(wf, _)| wf))
            .map_err(|e| RegistryError::InvalidDefinition { path: e.path, reason: e.reason, missing: e.missing })?;
        let id = workflow.id().to_string();
        let version = {
            let catalog = self.catalog();
            if catalog.is_fixed(&id) {
                let existing = catalog.get(tenant, &id).map_or(RunKind::Workflow, |(wf, _)| wf.kind());
                return Err(RegistryError::DefinitionIdTaken { id, existing, built_in: true });
            }
            let versions = catalog.versions(tenant, &id);
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
                tenant: tenant.to_owned(),
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
        self.catalog_mut().add(tenant, Version { definition: definition.clone(), workflow: Some(workflow) }, true);
        tracing::info!(id = %definition.id, version, kind = kind.as_str(), tenant, "registered a definition");
        Ok(definition)
    }

    /// A registered definition of `kind` of `tenant`: `version` 0 is the latest.
    pub fn definition(&self, tenant: &str, kind: RunKind, id: &str, version: u32) -> Result<Definition, RegistryError> {
        let catalog = self.catalog();
        let versions = catalog.versions(tenant, id).filter(|v| v.last().is_some_and(|v| v.definition.kind == kind));
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
            built_in: catalog.is_fixed(id),
        })
    }
}
