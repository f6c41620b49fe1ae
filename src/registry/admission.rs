//! How many runs execute at once, in all and per tenant (issue 13). A phase (a start, a resume, a recovery) holds a
//! permit while it executes; a run that is suspended or over holds none. Over the server's limit a start or resume
//! is shed (the caller is told to retry, elsewhere or later); over its tenant's, the tenant is told its limit, so
//! that one tenant cannot take the server from the others.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
};

use super::RegistryError;

/// Limits on runs executing at once (a suspended run does not count).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunLimits {
    /// In all: over it a start or resume is UNAVAILABLE (load shed; retry later or against another replica).
    pub max_running: usize,
    /// Per tenant: over it a start or resume is RESOURCE_EXHAUSTED for that tenant only.
    pub max_running_per_tenant: usize,
}

impl Default for RunLimits {
    fn default() -> Self {
        // About 10 KB a run executing: a GB of runs in flight before the server sheds.
        Self { max_running: 100_000, max_running_per_tenant: 100_000 }
    }
}

#[derive(Debug, Default)]
struct Counts {
    limits: RunLimits,
    running: usize,
    by_tenant: HashMap<Arc<str>, usize>,
}

/// The counts and limits; see the module docs.
#[derive(Debug, Default)]
pub(super) struct Admission {
    counts: Mutex<Counts>,
}

/// A phase's place among the runs executing; given back when dropped.
#[derive(Debug)]
pub(super) struct Permit {
    admission: Arc<Admission>,
    tenant: Arc<str>,
}

impl Admission {
    fn counts(&self) -> MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(super) fn set_limits(&self, limits: RunLimits) {
        self.counts().limits = limits;
    }

    /// A permit for a phase of `tenant`'s run, or why there is none now.
    pub(super) fn admit(self: &Arc<Self>, tenant: &Arc<str>) -> Result<Permit, RegistryError> {
        let mut counts = self.counts();
        let limits = counts.limits;
        if counts.running >= limits.max_running {
            return Err(RegistryError::ServerBusy { running: counts.running, limit: limits.max_running });
        }
        let of_tenant = counts.by_tenant.get(tenant).copied().unwrap_or(0);
        if of_tenant >= limits.max_running_per_tenant {
            return Err(RegistryError::TenantBusy {
                tenant: tenant.to_string(),
                running: of_tenant,
                limit: limits.max_running_per_tenant,
            });
        }
        Ok(self.count(&mut counts, tenant))
    }

    /// A permit whatever the limits: for runs recovered at start, which were admitted before the restart.
    pub(super) fn force(self: &Arc<Self>, tenant: &Arc<str>) -> Permit {
        let mut counts = self.counts();
        self.count(&mut counts, tenant)
    }

    fn count(self: &Arc<Self>, counts: &mut Counts, tenant: &Arc<str>) -> Permit {
        counts.running += 1;
        *counts.by_tenant.entry(Arc::clone(tenant)).or_default() += 1;
        Permit { admission: Arc::clone(self), tenant: Arc::clone(tenant) }
    }

    /// Runs executing, in all.
    #[cfg(test)]
    pub(super) fn running(&self) -> usize {
        self.counts().running
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut counts = self.admission.counts();
        counts.running = counts.running.saturating_sub(1);
        if let Some(count) = counts.by_tenant.get_mut(&self.tenant) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.by_tenant.remove(&self.tenant);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_hold_in_all_and_per_tenant_and_permits_are_given_back() {
        let admission = Arc::new(Admission::default());
        admission.set_limits(RunLimits { max_running: 3, max_running_per_tenant: 2 });
        let (acme, globex): (Arc<str>, Arc<str>) = ("acme".into(), "globex".into());
        let a1 = admission.admit(&acme).expect("acme 1");
        let _a2 = admission.admit(&acme).expect("acme 2");
        assert!(matches!(admission.admit(&acme), Err(RegistryError::TenantBusy { running: 2, limit: 2, .. })));
        let _g1 = admission.admit(&globex).expect("globex is not held back by acme");
        assert!(matches!(admission.admit(&globex), Err(RegistryError::ServerBusy { running: 3, limit: 3 })));
        let _forced = admission.force(&acme);
        assert_eq!(admission.running(), 4, "a recovered run counts, whatever the limits");
        drop(a1);
        drop(_forced);
        assert_eq!(admission.running(), 2);
        admission.admit(&acme).expect("a permit given back makes room");
    }
}
