//! Matching one request against one `PolicyRule` (upstream
//! `pkg/apis/rbac/v1/evaluation_helpers.go` and `RuleAllows` in
//! `plugin/pkg/auth/authorizer/rbac/rbac.go`), and comparing rule sets
//! for escalation checks (`pkg/registry/rbac/validation/policy_comparator.go`:
//! `Covers`, `BreakdownRule`, `CompactRules`, `CompactString`).

use std::collections::BTreeSet;

use k8s_openapi::api::rbac::v1::PolicyRule;

/// `*` in verbs, apiGroups, resources and nonResourceURLs.
pub const ALL: &str = "*";

/// What one request asks for, in RBAC's terms (`authorizer.Attributes`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    /// The verb (`get`, `list`, `bind`, `escalate`…).
    pub verb: String,
    /// Whether this is a resource request (else a non-resource URL).
    pub resource_request: bool,
    /// The API group (`""` for core).
    pub api_group: String,
    /// The resource (`pods`).
    pub resource: String,
    /// The subresource (`status`), empty when none.
    pub subresource: String,
    /// The namespace, empty for cluster-scoped requests.
    pub namespace: String,
    /// The object name, empty for collections and creates.
    pub name: String,
    /// The URL path of a non-resource request.
    pub path: String,
}

impl Request {
    /// A resource request.
    pub fn resource(
        verb: &str,
        api_group: &str,
        resource: &str,
        subresource: &str,
        namespace: &str,
        name: &str,
    ) -> Request {
        Request {
            verb: verb.into(),
            resource_request: true,
            api_group: api_group.into(),
            resource: resource.into(),
            subresource: subresource.into(),
            namespace: namespace.into(),
            name: name.into(),
            path: String::new(),
        }
    }

    /// A non-resource request (`get /healthz`).
    pub fn non_resource(verb: &str, path: &str) -> Request {
        Request {
            verb: verb.into(),
            path: path.into(),
            ..Request::default()
        }
    }
}

/// The items of an optional list.
pub fn items(list: &Option<Vec<String>>) -> &[String] {
    list.as_deref().unwrap_or(&[])
}

fn has(list: &[String], item: &str) -> bool {
    list.iter().any(|s| s == item)
}

/// `VerbMatches`.
pub fn verb_matches(rule: &PolicyRule, verb: &str) -> bool {
    rule.verbs.iter().any(|v| v == ALL || v == verb)
}

/// `APIGroupMatches`.
pub fn api_group_matches(rule: &PolicyRule, group: &str) -> bool {
    items(&rule.api_groups)
        .iter()
        .any(|g| g == ALL || g == group)
}

/// `ResourceMatches`: `*`, the exact `resource[/subresource]`, or `*/<sub>`
/// for a subresource. `pods/*` matches nothing special (upstream neither).
pub fn resource_matches(rule: &PolicyRule, combined: &str, subresource: &str) -> bool {
    items(&rule.resources).iter().any(|r| {
        r == ALL
            || r == combined
            || (!subresource.is_empty()
                && r.len() == subresource.len() + 2
                && r.starts_with("*/")
                && r.ends_with(subresource))
    })
}

/// `ResourceNameMatches`: an empty list matches every name; a non-empty one
/// only a request that names one of them (so never list, watch or create).
pub fn resource_name_matches(rule: &PolicyRule, name: &str) -> bool {
    let names = items(&rule.resource_names);
    names.is_empty() || names.iter().any(|n| n == name)
}

/// `NonResourceURLMatches`: `*`, the exact path, or a prefix ending in `*`.
pub fn non_resource_url_matches(rule: &PolicyRule, path: &str) -> bool {
    items(&rule.non_resource_urls).iter().any(|u| {
        u == ALL || u == path || (u.ends_with('*') && path.starts_with(u.trim_end_matches('*')))
    })
}

/// `RuleAllows`: whether `rule` grants `req`.
pub fn rule_allows(req: &Request, rule: &PolicyRule) -> bool {
    if req.resource_request {
        let combined = if req.subresource.is_empty() {
            req.resource.clone()
        } else {
            format!("{}/{}", req.resource, req.subresource)
        };
        return verb_matches(rule, &req.verb)
            && api_group_matches(rule, &req.api_group)
            && resource_matches(rule, &combined, &req.subresource)
            && resource_name_matches(rule, &req.name);
    }
    verb_matches(rule, &req.verb) && non_resource_url_matches(rule, &req.path)
}

fn one(s: &str) -> Option<Vec<String>> {
    Some(vec![s.to_string()])
}

/// `BreakdownRule`: one rule per (group, resource, verb[, name]) and per
/// (URL, verb).
pub fn breakdown(rule: &PolicyRule) -> Vec<PolicyRule> {
    let mut out = Vec::new();
    for group in items(&rule.api_groups) {
        for resource in items(&rule.resources) {
            for verb in &rule.verbs {
                let base = PolicyRule {
                    api_groups: one(group),
                    resources: one(resource),
                    verbs: vec![verb.clone()],
                    ..PolicyRule::default()
                };
                let names = items(&rule.resource_names);
                if names.is_empty() {
                    out.push(base);
                } else {
                    for name in names {
                        out.push(PolicyRule {
                            resource_names: one(name),
                            ..base.clone()
                        });
                    }
                }
            }
        }
    }
    for url in items(&rule.non_resource_urls) {
        for verb in &rule.verbs {
            out.push(PolicyRule {
                non_resource_urls: one(url),
                verbs: vec![verb.clone()],
                ..PolicyRule::default()
            });
        }
    }
    out
}

fn has_all(set: &[String], wanted: &[String]) -> bool {
    wanted.iter().all(|w| has(set, w))
}

fn resource_covers_all(set: &[String], wanted: &[String]) -> bool {
    if has(set, ALL) || has_all(set, wanted) {
        return true;
    }
    wanted.iter().all(|path| {
        if has(set, path) {
            return true;
        }
        match path.split_once('/') {
            Some((_, sub)) => has(set, &format!("*/{sub}")),
            None => false,
        }
    })
}

fn non_resource_url_covers(owner: &str, sub: &str) -> bool {
    owner == sub || (owner.ends_with('*') && sub.starts_with(owner.trim_end_matches('*')))
}

/// `ruleCovers`: whether `owner` grants everything `sub` grants.
pub fn rule_covers(owner: &PolicyRule, sub: &PolicyRule) -> bool {
    let verbs = has(&owner.verbs, ALL) || has_all(&owner.verbs, &sub.verbs);
    let groups = has(items(&owner.api_groups), ALL)
        || has_all(items(&owner.api_groups), items(&sub.api_groups));
    let resources = resource_covers_all(items(&owner.resources), items(&sub.resources));
    let urls = items(&sub.non_resource_urls).iter().all(|p| {
        items(&owner.non_resource_urls)
            .iter()
            .any(|o| non_resource_url_covers(o, p))
    });
    let owner_names = items(&owner.resource_names);
    let names = owner_names.is_empty()
        || (!items(&sub.resource_names).is_empty()
            && has_all(owner_names, items(&sub.resource_names)));
    verbs && groups && resources && names && urls
}

/// `Covers`: the broken-down parts of `servant` that no rule of `owner`
/// covers (empty: `owner` holds everything `servant` grants).
pub fn uncovered(owner: &[PolicyRule], servant: &[PolicyRule]) -> Vec<PolicyRule> {
    servant
        .iter()
        .flat_map(breakdown)
        .filter(|sub| !owner.iter().any(|o| rule_covers(o, sub)))
        .collect()
}

/// `CompactRules`: rules naming one group, one resource and at most one
/// name, and nothing else, are merged when only their verbs differ.
pub fn compact(rules: &[PolicyRule]) -> Vec<PolicyRule> {
    let mut out: Vec<PolicyRule> = Vec::new();
    let mut simple: Vec<PolicyRule> = Vec::new();
    for rule in rules {
        let is_simple = items(&rule.resource_names).len() <= 1
            && items(&rule.non_resource_urls).is_empty()
            && items(&rule.api_groups).len() == 1
            && items(&rule.resources).len() == 1;
        if !is_simple {
            out.push(rule.clone());
            continue;
        }
        let same = |r: &&mut PolicyRule| {
            items(&r.api_groups) == items(&rule.api_groups)
                && items(&r.resources) == items(&rule.resources)
                && items(&r.resource_names) == items(&rule.resource_names)
        };
        match simple.iter_mut().find(same) {
            Some(existing) => {
                for verb in &rule.verbs {
                    if !existing.verbs.contains(verb) {
                        existing.verbs.push(verb.clone());
                    }
                }
            }
            None => simple.push(rule.clone()),
        }
    }
    out.extend(simple);
    out
}

/// Go's `%q` of a `[]string`: `["a" "b"]`.
fn go_quoted(list: &[String]) -> String {
    let quoted: Vec<String> = list
        .iter()
        .map(|s| serde_json::to_string(s).unwrap_or_default())
        .collect();
    format!("[{}]", quoted.join(" "))
}

/// `CompactString`: `{APIGroups:[""], Resources:["pods"], Verbs:["get"]}`.
pub fn compact_string(rule: &PolicyRule) -> String {
    let mut parts = Vec::new();
    for (label, list) in [
        ("APIGroups", items(&rule.api_groups)),
        ("Resources", items(&rule.resources)),
        ("NonResourceURLs", items(&rule.non_resource_urls)),
        ("ResourceNames", items(&rule.resource_names)),
        ("Verbs", rule.verbs.as_slice()),
    ] {
        if !list.is_empty() {
            parts.push(format!("{label}:{}", go_quoted(list)));
        }
    }
    format!("{{{}}}", parts.join(", "))
}

/// The lines of an escalation error: the compacted missing rules, each as
/// [`compact_string`], sorted and deduplicated (upstream's `sets.String`).
pub fn describe_missing(missing: &[PolicyRule]) -> String {
    let lines: BTreeSet<String> = compact(missing).iter().map(compact_string).collect();
    lines.into_iter().collect::<Vec<_>>().join("\n")
}

/// Go's `%q` of a `[]string`, for messages (`(groups=["a" "b"])`).
pub fn quoted_list(list: &[String]) -> String {
    go_quoted(list)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(verbs: &[&str], groups: &[&str], resources: &[&str], names: &[&str]) -> PolicyRule {
        let v = |s: &[&str]| -> Option<Vec<String>> {
            (!s.is_empty()).then(|| s.iter().map(|x| x.to_string()).collect())
        };
        PolicyRule {
            verbs: verbs.iter().map(|x| x.to_string()).collect(),
            api_groups: v(groups),
            resources: v(resources),
            resource_names: v(names),
            non_resource_urls: None,
        }
    }

    fn url_rule(verbs: &[&str], urls: &[&str]) -> PolicyRule {
        PolicyRule {
            verbs: verbs.iter().map(|x| x.to_string()).collect(),
            non_resource_urls: Some(urls.iter().map(|x| x.to_string()).collect()),
            ..PolicyRule::default()
        }
    }

    /// Table-driven over upstream's matching rules: `*` forms, subresources,
    /// resource names, groups.
    #[test]
    fn resource_rules() {
        let cases: &[(PolicyRule, Request, bool)] = &[
            (
                rule(&["get"], &[""], &["pods"], &[]),
                Request::resource("get", "", "pods", "", "a", "p"),
                true,
            ),
            (
                rule(&["get"], &[""], &["pods"], &[]),
                Request::resource("list", "", "pods", "", "a", ""),
                false,
            ),
            (
                rule(&["*"], &[""], &["pods"], &[]),
                Request::resource("deletecollection", "", "pods", "", "a", ""),
                true,
            ),
            (
                rule(&["get"], &["apps"], &["pods"], &[]),
                Request::resource("get", "", "pods", "", "a", "p"),
                false,
            ),
            (
                rule(&["get"], &["*"], &["pods"], &[]),
                Request::resource("get", "apps", "pods", "", "a", "p"),
                true,
            ),
            (
                rule(&["get"], &[""], &["*"], &[]),
                Request::resource("get", "", "secrets", "", "a", "s"),
                true,
            ),
            // A subresource needs its own entry…
            (
                rule(&["get"], &[""], &["pods"], &[]),
                Request::resource("get", "", "pods", "status", "a", "p"),
                false,
            ),
            (
                rule(&["get"], &[""], &["pods/status"], &[]),
                Request::resource("get", "", "pods", "status", "a", "p"),
                true,
            ),
            // …or `*/<sub>`, or `*`.
            (
                rule(&["get"], &[""], &["*/status"], &[]),
                Request::resource("get", "", "nodes", "status", "", "n"),
                true,
            ),
            (
                rule(&["get"], &[""], &["*/status"], &[]),
                Request::resource("get", "", "nodes", "", "", "n"),
                false,
            ),
            (
                rule(&["get"], &[""], &["*/statu"], &[]),
                Request::resource("get", "", "nodes", "status", "", "n"),
                false,
            ),
            (
                rule(&["get"], &[""], &["*"], &[]),
                Request::resource("get", "", "pods", "log", "a", "p"),
                true,
            ),
            // `pods/*` is not a wildcard upstream.
            (
                rule(&["get"], &[""], &["pods/*"], &[]),
                Request::resource("get", "", "pods", "status", "a", "p"),
                false,
            ),
            (
                rule(&["get"], &[""], &["pods/status"], &[]),
                Request::resource("get", "", "pods", "", "a", "p"),
                false,
            ),
            // Resource names: the named object only, never collections or creates.
            (
                rule(&["get", "list", "create"], &[""], &["configmaps"], &["c1"]),
                Request::resource("get", "", "configmaps", "", "a", "c1"),
                true,
            ),
            (
                rule(&["get", "list", "create"], &[""], &["configmaps"], &["c1"]),
                Request::resource("get", "", "configmaps", "", "a", "c2"),
                false,
            ),
            (
                rule(&["get", "list", "create"], &[""], &["configmaps"], &["c1"]),
                Request::resource("list", "", "configmaps", "", "a", ""),
                false,
            ),
            (
                rule(&["get", "list", "create"], &[""], &["configmaps"], &["c1"]),
                Request::resource("create", "", "configmaps", "", "a", ""),
                false,
            ),
            // A resource rule never matches a URL.
            (
                rule(&["get"], &["*"], &["*"], &[]),
                Request::non_resource("get", "/healthz"),
                false,
            ),
        ];
        for (i, (r, req, want)) in cases.iter().enumerate() {
            assert_eq!(rule_allows(req, r), *want, "case {i}: {r:?} vs {req:?}");
        }
    }

    #[test]
    fn non_resource_rules() {
        let cases: &[(&[&str], &str, &str, bool)] = &[
            (&["/healthz"], "get", "/healthz", true),
            (&["/healthz"], "get", "/healthz/etcd", false),
            (&["/healthz/*"], "get", "/healthz/etcd", true),
            (&["/healthz/*"], "get", "/healthz", false),
            (&["/api*"], "get", "/apis/apps", true),
            (&["*"], "get", "/anything", true),
            (&["/version"], "post", "/version", false),
            (&["/version", "/version/"], "get", "/version/", true),
        ];
        for (urls, verb, path, want) in cases {
            let r = url_rule(&["get"], urls);
            assert_eq!(
                rule_allows(&Request::non_resource(verb, path), &r),
                *want,
                "{urls:?} {verb} {path}"
            );
        }
        // A URL rule never matches a resource request.
        let r = url_rule(&["*"], &["*"]);
        assert!(!rule_allows(
            &Request::resource("get", "", "pods", "", "", ""),
            &r
        ));
    }

    #[test]
    fn covers_and_messages() {
        let owner = vec![
            rule(&["get", "list"], &[""], &["pods"], &[]),
            rule(&["get"], &[""], &["*/status"], &[]),
            rule(&["get"], &[""], &["configmaps"], &["c1"]),
            url_rule(&["get"], &["/api/*"]),
        ];
        assert!(uncovered(&owner, &[rule(&["get"], &[""], &["pods"], &[])]).is_empty());
        assert!(uncovered(&owner, &[rule(&["get"], &[""], &["nodes/status"], &[])]).is_empty());
        assert!(uncovered(&owner, &[rule(&["get"], &[""], &["configmaps"], &["c1"])]).is_empty());
        assert!(uncovered(&owner, &[url_rule(&["get"], &["/api/v1"])]).is_empty());
        // Names held do not cover all names.
        assert_eq!(
            uncovered(&owner, &[rule(&["get"], &[""], &["configmaps"], &[])]).len(),
            1
        );
        let missing = uncovered(
            &owner,
            &[
                rule(
                    &["get", "create", "delete"],
                    &[""],
                    &["pods", "secrets"],
                    &[],
                ),
                url_rule(&["get"], &["/healthz"]),
            ],
        );
        assert_eq!(
            describe_missing(&missing),
            "{APIGroups:[\"\"], Resources:[\"pods\"], Verbs:[\"create\" \"delete\"]}\n\
             {APIGroups:[\"\"], Resources:[\"secrets\"], Verbs:[\"get\" \"create\" \"delete\"]}\n\
             {NonResourceURLs:[\"/healthz\"], Verbs:[\"get\"]}"
        );
        let star = vec![rule(&["*"], &["*"], &["*"], &[]), url_rule(&["*"], &["*"])];
        assert!(uncovered(&star, &missing).is_empty());
        assert_eq!(
            quoted_list(&["a".into(), "b\"c".into()]),
            "[\"a\" \"b\\\"c\"]"
        );
    }
}
