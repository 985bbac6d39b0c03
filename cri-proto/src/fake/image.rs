//! Image references as containerd reads them: docker-style normalization
//! (`nginx` → `docker.io/library/nginx:latest`) and image IDs (`sha256:<64 hex>`).

use std::hash::{DefaultHasher, Hash, Hasher};

/// An image in the fake image store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeImage {
    /// The image ID, `sha256:<64 hex>` (what PullImage returns as `image_ref`).
    pub id: String,
    /// Normalized tagged references, e.g. `docker.io/library/nginx:latest`.
    pub repo_tags: Vec<String>,
    /// Normalized digested references, e.g. `docker.io/library/nginx@sha256:…`.
    pub repo_digests: Vec<String>,
    /// Size in bytes (made up, stable per image).
    pub size: u64,
}

/// True for `sha256:` followed by 64 lowercase hex digits.
pub(crate) fn is_image_id(s: &str) -> bool {
    s.strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Normalize a reference the way containerd's `docker.ParseDockerRef` does:
/// add the `docker.io` domain and `library/` path for official images, add
/// `:latest` when there is neither tag nor digest, and drop the tag when there
/// is a digest. `None` when the reference cannot be parsed.
pub(crate) fn normalize(reference: &str) -> Option<String> {
    if reference.is_empty() || reference.contains(char::is_whitespace) {
        return None;
    }
    let (name_tag, digest) = match reference.split_once('@') {
        Some((n, d)) => {
            let (algo, hex) = d.split_once(':')?;
            if algo.is_empty() || hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            (n, Some(d))
        }
        None => (reference, None),
    };
    let last_slash = name_tag.rfind('/');
    let (name, tag) = match name_tag.rfind(':') {
        Some(i) if last_slash.is_none_or(|s| i > s) => (&name_tag[..i], Some(&name_tag[i + 1..])),
        _ => (name_tag, None),
    };
    if name.is_empty() || tag == Some("") || name.ends_with('/') || name.starts_with('/') {
        return None;
    }
    let (domain, path) = match name.split_once('/') {
        Some((first, rest))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            (first, rest.to_string())
        }
        _ => ("docker.io", name.to_string()),
    };
    let domain = if domain == "index.docker.io" {
        "docker.io"
    } else {
        domain
    };
    if path.is_empty()
        || path.contains("//")
        || !path
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/".contains(&b))
    {
        return None;
    }
    let path = if domain == "docker.io" && !path.contains('/') {
        format!("library/{path}")
    } else {
        path
    };
    Some(match (digest, tag) {
        (Some(d), _) => format!("{domain}/{path}@{d}"),
        (None, Some(t)) => format!("{domain}/{path}:{t}"),
        (None, None) => format!("{domain}/{path}:latest"),
    })
}

/// The repository part of a normalized reference (no tag, no digest).
fn repository(normalized: &str) -> &str {
    if let Some((repo, _)) = normalized.split_once('@') {
        return repo;
    }
    match (normalized.rfind(':'), normalized.rfind('/')) {
        (Some(c), Some(s)) if c > s => &normalized[..c],
        _ => normalized,
    }
}

/// 64 hex digits derived from `seed` (stable across runs).
fn stable_hex(seed: &str) -> String {
    (0u8..4)
        .map(|i| {
            let mut h = DefaultHasher::new();
            seed.hash(&mut h);
            i.hash(&mut h);
            format!("{:016x}", h.finish())
        })
        .collect()
}

impl FakeImage {
    /// The image a normalized reference names.
    pub(crate) fn for_reference(normalized: &str) -> Self {
        let repo = repository(normalized);
        let (repo_tags, repo_digests) = if normalized.contains('@') {
            (Vec::new(), vec![normalized.to_string()])
        } else {
            (
                vec![normalized.to_string()],
                vec![format!(
                    "{repo}@sha256:{}",
                    stable_hex(&format!("manifest {normalized}"))
                )],
            )
        };
        let id = format!("sha256:{}", stable_hex(&format!("config {normalized}")));
        let size = 1_000_000 + (u64::from_str_radix(&id[7..12], 16).unwrap_or(0) * 97);
        Self {
            id,
            repo_tags,
            repo_digests,
            size,
        }
    }

    /// True when `normalized` is one of this image's references.
    pub(crate) fn has_reference(&self, normalized: &str) -> bool {
        self.repo_tags.iter().any(|t| t == normalized)
            || self.repo_digests.iter().any(|d| d == normalized)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_like_containerd() {
        assert_eq!(
            normalize("nginx").as_deref(),
            Some("docker.io/library/nginx:latest")
        );
        assert_eq!(
            normalize("nginx:1.25").as_deref(),
            Some("docker.io/library/nginx:1.25")
        );
        assert_eq!(
            normalize("me/app").as_deref(),
            Some("docker.io/me/app:latest")
        );
        assert_eq!(
            normalize("registry.k8s.io/pause:3.9").as_deref(),
            Some("registry.k8s.io/pause:3.9")
        );
        assert_eq!(
            normalize("localhost:5000/app").as_deref(),
            Some("localhost:5000/app:latest")
        );
        let digest = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            normalize(&format!("nginx:1.25@{digest}")),
            Some(format!("docker.io/library/nginx@{digest}"))
        );
        assert_eq!(normalize("Nginx"), None);
        assert_eq!(normalize(""), None);
        assert_eq!(normalize("nginx:"), None);
    }

    #[test]
    fn image_ids() {
        let img = FakeImage::for_reference("docker.io/library/nginx:latest");
        assert!(is_image_id(&img.id));
        assert!(!is_image_id("sha256:abc"));
        assert!(img.repo_digests[0].starts_with("docker.io/library/nginx@sha256:"));
    }
}
