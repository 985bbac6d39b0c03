//! Cgroup names as the kubelet keeps them (`CgroupName`: a list of
//! components, e.g. `["kubepods", "burstable", "pod<uid>"]`) and their
//! spelling for each cgroup driver: `/kubepods/burstable/pod<uid>` (cgroupfs)
//! or `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice`
//! (systemd, with `-` in a component written `_`).

/// The cgroup driver: who owns the cgroup tree (`--cgroup-driver`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Driver {
    /// The agent writes cgroupfs directly.
    #[default]
    Cgroupfs,
    /// systemd owns the tree; cgroups are slices made through its D-Bus API.
    Systemd,
}

impl Driver {
    /// The driver as the kubelet's flag and CRI's `RuntimeConfig` name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Driver::Cgroupfs => "cgroupfs",
            Driver::Systemd => "systemd",
        }
    }
}

impl std::str::FromStr for Driver {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cgroupfs" => Ok(Driver::Cgroupfs),
            "systemd" => Ok(Driver::Systemd),
            other => Err(format!(
                "invalid cgroup driver {other:?}: must be \"cgroupfs\" or \"systemd\""
            )),
        }
    }
}

/// A cgroup as a list of components from the root of the hierarchy.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct CgroupName(Vec<String>);

/// A component that cannot be part of a cgroup name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid cgroup name component {component:?}: {reason}")]
pub struct InvalidName {
    pub component: String,
    pub reason: &'static str,
}

fn check(component: &str) -> Result<(), InvalidName> {
    if component.contains('_') {
        // Reserved, as upstream's NewCgroupName: the systemd spelling writes
        // '-' as '_', and must be read back.
        return Err(InvalidName {
            component: component.to_string(),
            reason: "contains '_'",
        });
    }
    check_path(component)
}

/// The checks of a component read from a path (which, as upstream's
/// `ParseCgroupfsToCgroupName`, may hold '_').
fn check_path(component: &str) -> Result<(), InvalidName> {
    let reason = if component.is_empty() {
        "empty"
    } else if component == "." || component == ".." {
        "a relative path"
    } else if component.contains('/') {
        "contains '/'"
    } else if component.chars().any(|c| c.is_control()) {
        "contains a control character"
    } else {
        return Ok(());
    };
    Err(InvalidName {
        component: component.to_string(),
        reason,
    })
}

impl CgroupName {
    /// The root of the hierarchy.
    pub fn root() -> Self {
        CgroupName(Vec::new())
    }

    /// A cgroupfs path (`/kubepods/burstable`) as a name.
    pub fn from_cgroupfs(path: &str) -> Result<Self, InvalidName> {
        let parts: Vec<String> = path
            .split('/')
            .filter(|p| !p.is_empty())
            .map(str::to_string)
            .collect();
        for p in &parts {
            check_path(p)?;
        }
        Ok(CgroupName(parts))
    }

    /// This name with `component` below it.
    pub fn child(&self, component: &str) -> Result<Self, InvalidName> {
        check(component)?;
        let mut parts = self.0.clone();
        parts.push(component.to_string());
        Ok(CgroupName(parts))
    }

    /// The components.
    pub fn components(&self) -> &[String] {
        &self.0
    }

    /// The last component (empty for the root).
    pub fn base(&self) -> &str {
        self.0.last().map_or("", String::as_str)
    }

    /// The cgroupfs path (`/kubepods/burstable/pod<uid>`; `/` for the root).
    pub fn to_cgroupfs(&self) -> String {
        format!("/{}", self.0.join("/"))
    }

    /// The path below a hierarchy's mount point (no leading `/`).
    pub fn relative(&self) -> String {
        self.0.join("/")
    }

    /// The systemd slice path (upstream's `ToSystemd` with runc's
    /// `ExpandSlice`): each component's `-` written `_`, every prefix a
    /// slice, `/kubepods.slice/kubepods-burstable.slice/…`; `/` for the root.
    pub fn to_systemd(&self) -> String {
        if self.0.is_empty() {
            return "/".into();
        }
        let mut path = String::new();
        let mut prefix = String::new();
        for part in &self.0 {
            if !prefix.is_empty() {
                prefix.push('-');
            }
            prefix.push_str(&part.replace('-', "_"));
            path.push('/');
            path.push_str(&prefix);
            path.push_str(".slice");
        }
        path
    }

    /// The name in `driver`'s spelling.
    pub fn to_driver(&self, driver: Driver) -> String {
        match driver {
            Driver::Cgroupfs => self.to_cgroupfs(),
            Driver::Systemd => self.to_systemd(),
        }
    }
}

impl std::fmt::Display for CgroupName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_cgroupfs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_drivers_spell_names_as_the_kubelet() {
        let pod = CgroupName::from_cgroupfs("/kubepods")
            .unwrap()
            .child("burstable")
            .unwrap()
            .child("pod6b1f-22aa")
            .unwrap();
        assert_eq!(pod.to_cgroupfs(), "/kubepods/burstable/pod6b1f-22aa");
        assert_eq!(pod.relative(), "kubepods/burstable/pod6b1f-22aa");
        assert_eq!(
            pod.to_systemd(),
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod6b1f_22aa.slice"
        );
        assert_eq!(pod.base(), "pod6b1f-22aa");
        assert_eq!(CgroupName::root().to_cgroupfs(), "/");
        assert_eq!(CgroupName::root().to_systemd(), "/");
        assert_eq!(
            CgroupName::from_cgroupfs("//a//b/").unwrap().to_cgroupfs(),
            "/a/b"
        );
    }

    #[test]
    fn components_that_would_escape_or_not_read_back_are_refused() {
        let root = CgroupName::root();
        for bad in ["", ".", "..", "a/b", "a_b", "a\nb"] {
            assert!(root.child(bad).is_err(), "{bad:?}");
        }
        assert!(CgroupName::from_cgroupfs("/kubepods/../etc").is_err());
        assert_eq!(
            root.child("a_b").unwrap_err().to_string(),
            "invalid cgroup name component \"a_b\": contains '_'"
        );
        assert_eq!("systemd".parse::<Driver>(), Ok(Driver::Systemd));
        assert!("cgroupfs2".parse::<Driver>().is_err());
    }
}
