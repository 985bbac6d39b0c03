//! Per-kind create and update rules, as kube-apiserver's registry strategies
//! (`pkg/registry/core/pod/strategy.go`): what the server resets or fills in
//! (`PrepareForCreate`, `PrepareForUpdate`), and what it refuses (`Validate`,
//! `ValidateUpdate`). Each [`super::resources::Resource`] names its strategy, so
//! the generic handlers never branch on a kind's name. The API rules themselves
//! (defaults, validation, QoS) are `berth-api`'s.

use berth_api::validation::{self, FieldError, NameRule};
use k8s_openapi::api::core::v1::{Pod, PodSpec, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::{Value, json};

use super::error::{ApiError, ApiResult, Cause};
use super::objects::str_at;
use super::resources::Resource;

/// What a kind does on create and update beyond the generic store.
pub trait Strategy: Sync {
    /// Which names the kind's objects may have.
    fn name_rule(&self) -> NameRule {
        NameRule::Subdomain
    }

    /// `PrepareForCreate` plus defaulting: reset what clients may not set, fill in defaults.
    fn prepare_for_create(&self, _obj: &mut Value) -> ApiResult<()> {
        Ok(())
    }

    /// Kind-specific validation of a new object (the metadata is checked for every kind).
    fn validate(&self, _obj: &Value) -> ApiResult<Vec<FieldError>> {
        Ok(Vec::new())
    }

    /// `PrepareForUpdate` plus defaulting, after the generic store carried the
    /// server-owned metadata over and, for `status`, the old spec (else the old status).
    fn prepare_for_update(&self, _old: &Value, _new: &mut Value) -> ApiResult<()> {
        Ok(())
    }

    /// Kind-specific validation of an update (`status` is true for the status subresource).
    fn validate_update(
        &self,
        _old: &Value,
        _new: &Value,
        _status: bool,
    ) -> ApiResult<Vec<FieldError>> {
        Ok(Vec::new())
    }

    /// Refuse deleting what must stay (`BeforeDelete`).
    fn check_delete(&self, _name: &str) -> ApiResult<()> {
        Ok(())
    }

    /// `CheckGracefulDelete`: the grace period (seconds, > 0) to mark the object
    /// with (`deletionTimestamp`, `deletionGracePeriodSeconds`) instead of
    /// removing it at once; `requested` is the request's `gracePeriodSeconds`.
    fn graceful_delete(&self, _old: &Value, _requested: Option<i64>) -> Option<i64> {
        None
    }

    /// Whether deleting an object first deletes what it contains (a namespace's objects).
    fn deletes_contents(&self) -> bool {
        false
    }
}

/// The generic store's rules: nothing beyond metadata.
pub struct Plain;
impl Strategy for Plain {}

/// Namespaces: a label for a name, the `kubernetes` finalizer, phase Active.
pub struct NamespaceStrategy;
impl Strategy for NamespaceStrategy {
    fn name_rule(&self) -> NameRule {
        NameRule::Label
    }

    fn prepare_for_create(&self, obj: &mut Value) -> ApiResult<()> {
        if let Some(o) = obj.as_object_mut() {
            o.insert("spec".into(), json!({"finalizers": ["kubernetes"]}));
            o.insert("status".into(), json!({"phase": "Active"}));
        }
        Ok(())
    }

    fn check_delete(&self, name: &str) -> ApiResult<()> {
        if ["default", "kube-system", "kube-public"].contains(&name) {
            return Err(ApiError::Forbidden(format!(
                "namespaces \"{name}\" is forbidden: this namespace may not be deleted"
            )));
        }
        Ok(())
    }

    fn deletes_contents(&self) -> bool {
        true
    }
}

/// Pods: `berth-api` defaults and validation, status reset to Pending with
/// the QoS class on create, spec immutable but for images and tolerations.
pub struct PodStrategy;

fn typed<T: serde::de::DeserializeOwned>(v: &Value, what: &str) -> ApiResult<T> {
    serde_json::from_value(v.clone())
        .map_err(|e| ApiError::BadRequest(format!("{what} does not decode: {e}")))
}

fn pod_of(obj: &Value) -> ApiResult<Pod> {
    typed(obj, "the pod")
}

/// Apply the API defaults to the pod's spec in place (metadata stays as sent,
/// byte for byte), plus what kube-apiserver's admission and serialisation add:
/// `priority: 0` and `preemptionPolicy` (the Priority plugin, with no
/// PriorityClass), `resources: {}` on every container (a struct upstream, so
/// always present).
fn default_spec(obj: &mut Value) -> ApiResult<Pod> {
    let mut pod = pod_of(obj)?;
    berth_api::defaults::apply(&mut pod);
    let spec = pod.spec.get_or_insert_with(PodSpec::default);
    spec.priority.get_or_insert(0);
    spec.preemption_policy
        .get_or_insert_with(|| "PreemptLowerPriority".to_string());
    for c in spec
        .containers
        .iter_mut()
        .chain(spec.init_containers.iter_mut().flatten())
    {
        c.resources.get_or_insert_with(Default::default);
    }
    let spec = serde_json::to_value(&pod.spec).map_err(|e| ApiError::Internal(e.to_string()))?;
    if let Some(o) = obj.as_object_mut() {
        o.insert("spec".into(), spec);
    }
    Ok(pod)
}

fn set_status_field(obj: &mut Value, key: &str, value: Value) {
    if let Some(o) = obj.as_object_mut() {
        let status = o.entry("status").or_insert_with(|| json!({}));
        if !status.is_object() {
            *status = json!({});
        }
        if let Some(s) = status.as_object_mut() {
            s.insert(key.into(), value);
        }
    }
}

impl Strategy for PodStrategy {
    fn prepare_for_create(&self, obj: &mut Value) -> ApiResult<()> {
        if let Some(o) = obj.as_object_mut() {
            o.insert("status".into(), json!({}));
        }
        let pod = default_spec(obj)?;
        set_status_field(obj, "phase", json!("Pending"));
        set_status_field(obj, "qosClass", json!(berth_api::qos::pod_qos_class(&pod)));
        Ok(())
    }

    fn validate(&self, obj: &Value) -> ApiResult<Vec<FieldError>> {
        let pod = pod_of(obj)?;
        Ok(validation::validate_pod_spec(
            pod.spec.as_ref().unwrap_or(&PodSpec::default()),
        ))
    }

    fn prepare_for_update(&self, old: &Value, new: &mut Value) -> ApiResult<()> {
        let pod = default_spec(new)?;
        // The QoS class is fixed at creation; a status write that leaves it out keeps it.
        if new.pointer("/status/qosClass").is_none() {
            let qos = match old.pointer("/status/qosClass") {
                Some(q) => q.clone(),
                None => json!(berth_api::qos::pod_qos_class(&pod)),
            };
            set_status_field(new, "qosClass", qos);
        }
        Ok(())
    }

    /// A pod bound to a node is deleted gracefully: its agent stops it within
    /// the grace period (the request's, else the spec's), then deletes the object.
    /// An unbound pod, or a grace of 0, goes at once.
    fn graceful_delete(&self, old: &Value, requested: Option<i64>) -> Option<i64> {
        let grace = requested
            .or_else(|| {
                old.pointer("/spec/terminationGracePeriodSeconds")
                    .and_then(Value::as_i64)
            })
            .unwrap_or(berth_api::defaults::DEFAULT_TERMINATION_GRACE_PERIOD_SECONDS)
            .max(0);
        let scheduled = !str_at(old, "/spec/nodeName").is_empty();
        (scheduled && grace > 0).then_some(grace)
    }

    fn validate_update(
        &self,
        old: &Value,
        new: &Value,
        status: bool,
    ) -> ApiResult<Vec<FieldError>> {
        if status {
            // `ValidatePodStatusUpdate`: the spec is the stored one, not the client's.
            return Ok(Vec::new());
        }
        // The stored pod gets today's defaults too (upstream defaults on every
        // decode): a pod stored before a default existed may still be updated.
        let old = default_spec(&mut old.clone())?;
        let new = pod_of(new)?;
        let default_spec = PodSpec::default();
        let new_spec = new.spec.as_ref().unwrap_or(&default_spec);
        let mut errs = validation::validate_pod_spec(new_spec);
        errs.extend(validation::validate_pod_spec_update(
            new_spec,
            old.spec.as_ref().unwrap_or(&default_spec),
        ));
        Ok(errs)
    }
}

/// ConfigMaps: `berth-api`'s `ValidateConfigMap` (keys, 1 MiB) and the
/// `immutable` rule on update.
pub struct ConfigMapStrategy;
impl Strategy for ConfigMapStrategy {
    fn validate(&self, obj: &Value) -> ApiResult<Vec<FieldError>> {
        Ok(validation::validate_configmap(&typed(obj, "ConfigMap")?))
    }

    fn validate_update(
        &self,
        old: &Value,
        new: &Value,
        _status: bool,
    ) -> ApiResult<Vec<FieldError>> {
        Ok(validation::validate_configmap_update(
            &typed(new, "ConfigMap")?,
            &typed(old, "ConfigMap")?,
        ))
    }
}

/// Secrets: `stringData` merged into `data` and dropped (never stored),
/// type defaulted to `Opaque`; `berth-api`'s `ValidateSecret` (keys, 1 MiB,
/// what each type requires) and, on update, type and `immutable` rules.
pub struct SecretStrategy;

fn default_secret(obj: &mut Value) -> ApiResult<()> {
    let mut secret: Secret = typed(obj, "Secret")?;
    berth_api::defaults::secret(&mut secret);
    let Some(o) = obj.as_object_mut() else {
        return Ok(());
    };
    o.remove("stringData");
    o.insert("type".into(), json!(secret.type_));
    if let Some(data) = secret.data {
        o.insert(
            "data".into(),
            serde_json::to_value(data).map_err(|e| ApiError::Internal(e.to_string()))?,
        );
    }
    Ok(())
}

impl Strategy for SecretStrategy {
    fn prepare_for_create(&self, obj: &mut Value) -> ApiResult<()> {
        default_secret(obj)
    }

    fn validate(&self, obj: &Value) -> ApiResult<Vec<FieldError>> {
        Ok(validation::validate_secret(&typed(obj, "Secret")?))
    }

    fn prepare_for_update(&self, _old: &Value, new: &mut Value) -> ApiResult<()> {
        default_secret(new)
    }

    fn validate_update(
        &self,
        old: &Value,
        new: &Value,
        _status: bool,
    ) -> ApiResult<Vec<FieldError>> {
        Ok(validation::validate_secret_update(
            &typed(new, "Secret")?,
            &typed(old, "Secret")?,
        ))
    }
}

/// RuntimeClasses: `berth-api`'s `ValidateRuntimeClass` (handler, overhead,
/// scheduling) and, on update, the handler kept.
pub struct RuntimeClassStrategy;
impl Strategy for RuntimeClassStrategy {
    fn validate(&self, obj: &Value) -> ApiResult<Vec<FieldError>> {
        Ok(validation::validate_runtime_class(&typed(
            obj,
            "RuntimeClass",
        )?))
    }

    fn validate_update(
        &self,
        old: &Value,
        new: &Value,
        _status: bool,
    ) -> ApiResult<Vec<FieldError>> {
        Ok(validation::validate_runtime_class_update(
            &typed(new, "RuntimeClass")?,
            &typed(old, "RuntimeClass")?,
        ))
    }
}

/// A `StatusCause` for each field error.
pub fn causes(errs: Vec<FieldError>) -> Vec<Cause> {
    errs.into_iter()
        .map(|e| Cause {
            reason: e.error_type.cause_type().to_string(),
            field: e.field,
            message: e.reason,
        })
        .collect()
}

/// The object's metadata checked as `ValidateObjectMeta` does for `res`.
pub fn validate_meta(res: &Resource, obj: &Value) -> ApiResult<Vec<FieldError>> {
    let meta: ObjectMeta = typed(obj.get("metadata").unwrap_or(&Value::Null), "metadata")?;
    Ok(validation::validate_object_meta(
        &meta,
        res.namespaced,
        res.strategy.name_rule(),
    ))
}

/// The new metadata of an update checked as on create, except for the label and
/// annotation errors that the stored object already had (unchanged fields are
/// not judged again, so an object stored before a rule existed can still have its
/// status written; upstream "ratchets" validation the same way).
pub fn validate_meta_update(
    res: &Resource,
    old: &Value,
    new: &Value,
) -> ApiResult<Vec<FieldError>> {
    let mut errs = validate_meta(res, new)?;
    for field in ["labels", "annotations"] {
        if old.pointer(&format!("/metadata/{field}")) == new.pointer(&format!("/metadata/{field}"))
        {
            let path = format!("metadata.{field}");
            errs.retain(|e| e.field != path);
        }
    }
    Ok(errs)
}

/// 422 listing every cause, or Ok when there are none.
pub fn invalid(res: &Resource, obj: &Value, errs: Vec<FieldError>) -> ApiResult<()> {
    if errs.is_empty() {
        return Ok(());
    }
    Err(ApiError::Invalid {
        kind: res.kind.into(),
        name: str_at(obj, "/metadata/name").into(),
        causes: causes(errs),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_defaults_and_qos() {
        let mut p = json!({"metadata": {"name": "p", "namespace": "d"}, "spec": {"containers": [
            {"name": "c", "image": "nginx"}, {"name": "d", "image": "busybox:1.36",
             "resources": {"limits": {"cpu": "1"}}}]}});
        PodStrategy.prepare_for_create(&mut p).expect("prepare");
        assert_eq!(p["spec"]["containers"][0]["imagePullPolicy"], "Always");
        assert_eq!(
            p["spec"]["containers"][1]["imagePullPolicy"],
            "IfNotPresent"
        );
        assert_eq!(
            p["spec"]["containers"][1]["resources"]["requests"]["cpu"],
            "1"
        );
        assert_eq!(p["spec"]["containers"][0]["resources"], json!({}));
        assert_eq!(p["spec"]["priority"], 0);
        assert_eq!(
            p["status"],
            json!({"phase": "Pending", "qosClass": "Burstable"})
        );
        assert!(PodStrategy.validate(&p).expect("decodes").is_empty());
    }

    /// Regression (issue 7): the API server defaulted `x:latest@sha256:…` to
    /// IfNotPresent; upstream keeps the tag, so it is Always (as the agent said).
    #[test]
    fn tag_and_digest_pulls_always() {
        let digest = "sha256:0000000000000000000000000000000000000000000000000000000000000000";
        let mut p = json!({"metadata": {"name": "p"}, "spec": {"containers": [
            {"name": "a", "image": format!("x:latest@{digest}")},
            {"name": "b", "image": format!("x@{digest}")},
            {"name": "c", "image": format!("localhost:5000/x:1.0@{digest}")}]}});
        PodStrategy.prepare_for_create(&mut p).expect("prepare");
        let policies: Vec<&Value> = (0..3)
            .map(|i| &p["spec"]["containers"][i]["imagePullPolicy"])
            .collect();
        assert_eq!(
            policies,
            [
                &json!("Always"),
                &json!("IfNotPresent"),
                &json!("IfNotPresent")
            ]
        );
    }

    /// Regression (issue 7): the API server compared quantity strings.
    #[test]
    fn qos_compares_quantities() {
        let mut p = json!({"metadata": {"name": "p"}, "spec": {"containers": [
            {"name": "a", "image": "x:1", "resources": {
                "requests": {"cpu": "1", "memory": "64Mi"},
                "limits": {"cpu": "1000m", "memory": "67108864"}}}]}});
        PodStrategy.prepare_for_create(&mut p).expect("prepare");
        assert_eq!(p["status"]["qosClass"], "Guaranteed");
    }

    #[test]
    fn the_full_pod_validation_runs() {
        let mut p = json!({"metadata": {"name": "p"}, "spec": {"containers": [
            {"name": "a", "image": "x:1", "ports": [{"containerPort": 70000}],
             "resources": {"requests": {"cpu": "2"}, "limits": {"cpu": "1"}}}]}});
        PodStrategy.prepare_for_create(&mut p).expect("prepare");
        let errs = PodStrategy.validate(&p).expect("decodes");
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.containers[0].ports[0].containerPort",
                "spec.containers[0].resources.requests[cpu]"
            ]
        );
        let causes = causes(errs);
        assert_eq!(causes[0].reason, "FieldValueInvalid");
    }

    #[test]
    fn unchanged_bad_labels_do_not_block_updates() {
        let res = super::super::resources::find("", "v1", "pods").expect("pods");
        let old = json!({"metadata": {"name": "p", "namespace": "d", "labels": {"a": "b c"}}});
        let mut new = old.clone();
        new["status"] = json!({"phase": "Running"});
        assert!(
            validate_meta_update(res, &old, &new)
                .expect("decodes")
                .is_empty()
        );
        new["metadata"]["labels"]["x"] = json!("y");
        let errs = validate_meta_update(res, &old, &new).expect("decodes");
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].field, "metadata.labels");
    }

    /// A pod stored without today's defaults (by an older berth) can still have
    /// its labels changed: the immutability check compares defaulted specs.
    #[test]
    fn an_old_undefaulted_pod_may_be_updated() {
        let old = json!({"metadata": {"name": "p"}, "spec": {"nodeName": "n", "hostNetwork": true,
            "containers": [{"name": "a", "image": "x:1", "ports": [{"containerPort": 80}]}]}});
        let mut new = old.clone();
        new["metadata"]["labels"] = json!({"app": "web"});
        PodStrategy
            .prepare_for_update(&old, &mut new)
            .expect("prepare");
        let errs = PodStrategy
            .validate_update(&old, &new, false)
            .expect("decodes");
        assert!(errs.is_empty(), "{errs:?}");
    }

    #[test]
    fn spec_is_immutable_but_for_images() {
        let mut old = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a", "image": "x:1"}]}});
        PodStrategy.prepare_for_create(&mut old).expect("prepare");
        let mut new = old.clone();
        new["spec"]["containers"][0]["image"] = json!("x:2");
        PodStrategy
            .prepare_for_update(&old, &mut new)
            .expect("prepare");
        assert!(
            PodStrategy
                .validate_update(&old, &new, false)
                .expect("ok")
                .is_empty()
        );
        new["spec"]["restartPolicy"] = json!("Never");
        let errs = PodStrategy.validate_update(&old, &new, false).expect("ok");
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].field, "spec");
        assert!(
            PodStrategy
                .validate_update(&old, &new, true)
                .expect("ok")
                .is_empty()
        );
    }
}
