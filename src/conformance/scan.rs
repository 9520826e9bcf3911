//! Reading a tenant's keys by prefix, a page at a time.

use super::effects::json_write;
use super::tenant;
use crate::backend::{Action, Backend, Completion, Outcome};

/// **Contract 3, scans.** `scan` lists a tenant's keys under a prefix in key
/// order, at most `limit`; `scan_after` gives the page after a key, so that
/// paging with the last key of each page walks every key once. Another
/// tenant's keys and keys outside the prefix never appear.
pub async fn scans_page_through_a_prefix<B: Backend + Clone>(backend: B) {
    let (acme, globex) = (tenant("acme"), tenant("globex"));
    let write = |tenant: &crate::TenantId, keys: &[&str]| {
        let mut action = Action::acknowledge();
        if let Action::Commit { writes, .. } = &mut action {
            writes.extend(keys.iter().map(|k| json_write(k, &serde_json::json!(k))));
        }
        Completion {
            tenant: tenant.clone(),
            input: None,
            marker: None,
            action,
        }
    };
    let outcomes = backend
        .complete(vec![
            write(&acme, &["a/1", "a/2", "a/3", "a/4", "a/5", "b/1", "a"]),
            write(&globex, &["a/0", "a/9"]),
        ])
        .await
        .expect("complete");
    assert_eq!(outcomes, vec![Outcome::Applied; 2]);
    let keys = |found: Vec<(String, crate::backend::Versioned)>| {
        found.into_iter().map(|(k, _)| k).collect::<Vec<_>>()
    };
    let first = backend.scan(&acme, "a/", 2).await.expect("scan");
    assert_eq!(keys(first), ["a/1", "a/2"]);
    let next = backend
        .scan_after(&acme, "a/", "a/2", 2)
        .await
        .expect("scan_after");
    assert_eq!(keys(next), ["a/3", "a/4"]);
    let last = backend
        .scan_after(&acme, "a/", "a/4", 2)
        .await
        .expect("scan_after");
    assert_eq!(keys(last), ["a/5"]);
    let past = backend
        .scan_after(&acme, "a/", "a/5", 2)
        .await
        .expect("scan_after");
    assert!(past.is_empty(), "nothing after the last key");
    let before = backend
        .scan_after(&acme, "a/", "", 10)
        .await
        .expect("scan_after");
    assert_eq!(
        keys(before),
        ["a/1", "a/2", "a/3", "a/4", "a/5"],
        "a cursor before the prefix starts at the prefix"
    );
}
