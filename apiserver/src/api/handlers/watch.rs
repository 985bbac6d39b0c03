//! Watch: the initial state, then the storage's events as they come, with
//! bookmarks, until the timeout.

use super::read::{Filter, collect};
use super::*;

pub(super) fn expired_event(msg: String) -> Value {
    json!({"type": "ERROR", "object": ApiError::Expired(msg).status()})
}

/// Serve a watch: one JSON event per line, flushed per event.
pub(super) async fn watch_handler(
    state: &Arc<ApiState>,
    target: &Target,
    params: &Params,
    as_table: bool,
) -> ApiResult<Response> {
    let res = target.res;
    let filter = Filter::new(res, params)?;
    let prefix = collection_prefix(res.name, target.namespace.as_deref())
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let bookmarks = params
        .get("allowWatchBookmarks")
        .is_some_and(|v| crate::api::objects::query_flag(v));
    let timeout = match params.get("timeoutSeconds") {
        Some(t) => Duration::from_secs(
            t.parse::<u64>()
                .map_err(|_| ApiError::BadRequest(format!("invalid timeoutSeconds: {t:?}")))?,
        ),
        None => Duration::from_secs(1800),
    };
    let include = IncludeObject::parse(params.get("includeObject").map(String::as_str));
    let rv = params.get("resourceVersion").map_or("", String::as_str);
    let mut initial = Vec::new();
    let from = if rv.is_empty() || rv == "0" {
        let mut p = params.clone();
        p.remove("resourceVersion");
        p.remove("limit");
        p.remove("continue");
        let (items, rev, _, _) = collect(state, target, &p, Some(0)).await?;
        for obj in items {
            initial.push(("ADDED", obj));
        }
        rev
    } else {
        parse_rv(rv)?
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, Infallible>>(64);
    let storage = state.storage.clone();
    let bookmark_every = state.config.bookmark_interval;
    let kind = res.kind;
    let printer = res.printer;
    let api_version = res.api_version();
    let render = move |ty: &str, obj: Value| -> Bytes {
        let object = if as_table && ty != "ERROR" && ty != "BOOKMARK" {
            table::table(
                printer,
                std::slice::from_ref(&obj),
                include,
                json!({"resourceVersion": str_at(&obj, "/metadata/resourceVersion")}),
            )
        } else {
            obj
        };
        let mut line = json!({"type": ty, "object": object}).to_string();
        line.push('\n');
        Bytes::from(line)
    };
    let stream = storage.watch(&prefix, from).await;
    tokio::spawn(async move {
        for (ty, obj) in initial {
            if tx.send(Ok(render(ty, obj))).await.is_err() {
                return;
            }
        }
        let mut events = match stream {
            Ok(s) => s,
            Err(storage::Error::Compacted {
                revision,
                compact_revision,
                ..
            }) => {
                let ev = expired_event(format!(
                    "too old resource version: {revision} ({compact_revision})"
                ));
                let _ = tx.send(Ok(Bytes::from(format!("{ev}\n")))).await;
                return;
            }
            Err(e) => {
                let ev =
                    json!({"type": "ERROR", "object": ApiError::Internal(e.to_string()).status()});
                let _ = tx.send(Ok(Bytes::from(format!("{ev}\n")))).await;
                return;
            }
        };
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut tick = tokio::time::interval(bookmark_every);
        tick.tick().await;
        let mut last_rv = from;
        loop {
            tokio::select! {
                _ = &mut deadline => return,
                _ = tx.closed() => return,
                _ = tick.tick(), if bookmarks => {
                    let obj = json!({"kind": kind, "apiVersion": api_version,
                        "metadata": {"resourceVersion": last_rv.to_string()}});
                    if tx.send(Ok(render("BOOKMARK", obj))).await.is_err() {
                        return;
                    }
                }
                ev = events.next() => {
                    let ev = match ev {
                        None => return,
                        Some(Ok(ev)) => ev,
                        Some(Err(storage::Error::Compacted { revision, compact_revision, .. })) => {
                            let ev = expired_event(format!("too old resource version: {revision} ({compact_revision})"));
                            let _ = tx.send(Ok(Bytes::from(format!("{ev}\n")))).await;
                            return;
                        }
                        Some(Err(e)) => {
                            let ev = json!({"type": "ERROR", "object": ApiError::Internal(e.to_string()).status()});
                            let _ = tx.send(Ok(Bytes::from(format!("{ev}\n")))).await;
                            return;
                        }
                    };
                    last_rv = ev.revision;
                    let Ok(obj) = decode_with_resource_version(&ev.value, ev.revision) else { continue };
                    let now = filter.matches(&obj);
                    let before = ev
                        .prev_value
                        .as_deref()
                        .and_then(|p| serde_json::from_slice::<Value>(p).ok())
                        .is_some_and(|p| filter.matches(&p));
                    let ty = match ev.kind {
                        EventKind::Added if now => "ADDED",
                        EventKind::Deleted if now || before => "DELETED",
                        EventKind::Modified if now && before => "MODIFIED",
                        EventKind::Modified if now => "ADDED",
                        EventKind::Modified if before => "DELETED",
                        _ => continue,
                    };
                    if tx.send(Ok(render(ty, obj))).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    let mut resp = Response::new(body);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json;stream=watch"),
    );
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, private"),
    );
    Ok(resp)
}
