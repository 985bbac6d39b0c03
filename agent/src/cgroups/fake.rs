//! A cgroup manager that keeps its cgroups in memory and records every call:
//! for tests of what the agent asks of the cgroup tree (and of drivers this
//! host cannot run: the systemd driver, cgroup v2).

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::{CgroupError, CgroupManager, CgroupName, Driver, ResourceConfig};

/// One call to the manager.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Create(String, ResourceConfig),
    Update(String, ResourceConfig),
    Destroy(String),
}

#[derive(Debug, Default)]
struct State {
    cgroups: BTreeMap<CgroupName, ResourceConfig>,
    pids: BTreeMap<CgroupName, Vec<i32>>,
    calls: Vec<Call>,
    busy_destroys: usize,
}

/// The recording fake (names spelled as `driver` spells them).
#[derive(Debug, Default)]
pub struct RecordingManager {
    driver: Driver,
    state: Mutex<State>,
}

impl RecordingManager {
    pub fn new(driver: Driver) -> Self {
        RecordingManager {
            driver,
            state: Mutex::default(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.state().calls.clone()
    }

    /// The cgroups that exist, with the values last set (merged).
    pub fn cgroups(&self) -> BTreeMap<String, ResourceConfig> {
        self.state()
            .cgroups
            .iter()
            .map(|(n, c)| (self.name(n), c.clone()))
            .collect()
    }

    /// Pretend `pids` run in `name`.
    pub fn set_pids(&self, name: &CgroupName, pids: Vec<i32>) {
        self.state().pids.insert(name.clone(), pids);
    }

    /// The next `n` destroys find the cgroup busy.
    pub fn fail_destroys_busy(&self, n: usize) {
        self.state().busy_destroys = n;
    }
}

fn merge(into: &mut ResourceConfig, from: &ResourceConfig) {
    into.cpu_shares = from.cpu_shares.or(into.cpu_shares);
    into.cpu_quota = from.cpu_quota.or(into.cpu_quota);
    into.cpu_period = from.cpu_period.or(into.cpu_period);
    into.memory = from.memory.or(into.memory);
    into.pids_limit = from.pids_limit.or(into.pids_limit);
}

impl CgroupManager for RecordingManager {
    fn driver(&self) -> Driver {
        self.driver
    }

    fn name(&self, name: &CgroupName) -> String {
        name.to_driver(self.driver)
    }

    fn exists(&self, name: &CgroupName) -> bool {
        self.state().cgroups.contains_key(name)
    }

    fn create(&self, name: &CgroupName, config: &ResourceConfig) -> Result<(), CgroupError> {
        let spelled = self.name(name);
        let mut s = self.state();
        s.calls.push(Call::Create(spelled, config.clone()));
        // Parents exist once a child does, as mkdir -p makes them.
        let mut parent = CgroupName::root();
        for c in name
            .components()
            .iter()
            .take(name.components().len().saturating_sub(1))
        {
            parent = parent.child(c).unwrap_or_else(|_| parent.clone());
            s.cgroups.entry(parent.clone()).or_default();
        }
        merge(s.cgroups.entry(name.clone()).or_default(), config);
        Ok(())
    }

    fn update(&self, name: &CgroupName, config: &ResourceConfig) -> Result<(), CgroupError> {
        let spelled = self.name(name);
        let mut s = self.state();
        s.calls.push(Call::Update(spelled.clone(), config.clone()));
        match s.cgroups.get_mut(name) {
            Some(existing) => {
                merge(existing, config);
                Ok(())
            }
            None => Err(CgroupError::Io {
                cgroup: spelled,
                message: "no such cgroup".into(),
            }),
        }
    }

    fn pids(&self, name: &CgroupName) -> Vec<i32> {
        let s = self.state();
        s.pids
            .iter()
            .filter(|(n, _)| n.components().starts_with(name.components()))
            .flat_map(|(_, p)| p.iter().copied())
            .collect()
    }

    fn children(&self, name: &CgroupName) -> Vec<String> {
        let depth = name.components().len() + 1;
        self.state()
            .cgroups
            .keys()
            .filter(|n| {
                n.components().len() == depth && n.components().starts_with(name.components())
            })
            .map(|n| n.base().to_string())
            .collect()
    }

    fn destroy(&self, name: &CgroupName) -> Result<(), CgroupError> {
        let spelled = self.name(name);
        let mut s = self.state();
        s.calls.push(Call::Destroy(spelled.clone()));
        if s.busy_destroys > 0 {
            s.busy_destroys -= 1;
            return Err(CgroupError::Busy { cgroup: spelled });
        }
        s.cgroups.remove(name);
        s.pids.remove(name);
        Ok(())
    }
}
