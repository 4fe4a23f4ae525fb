//! The scenario suite on a real three-master Redis Cluster made for the test.

use std::sync::Arc;

use tollgate_quota::store::{RedisStore, Store};
use tollgate_testkit::redis::RedisCluster;

use crate::scenarios::{self, check, unique_key, Fixture, TestTime};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_holds_on_a_three_master_cluster() {
    let cluster = RedisCluster::start();
    let store = RedisStore::open(&cluster.location().parse().unwrap()).unwrap();
    let f = Fixture { store: Arc::new(store), time: TestTime::real() };
    scenarios::run_all(&f).await;

    // Metered keys spread over the masters, and each multi-limit check stays on one.
    let limits = r#"[{"name":"a","algorithm":"fixed_window","limit":5,"window_secs":60},
                     {"name":"b","limit":10,"window_secs":1}]"#;
    for _ in 0..30 {
        assert!(f.store.check(&check(&unique_key("free"), 1, limits)).await.unwrap().admitted);
    }
    let holding = cluster.nodes.iter().filter(|n| n.cli(&["DBSIZE"]).trim() != "0").count();
    assert!(holding >= 2, "keys on {holding} of 3 masters");

    // A settlement's marker lives on the master of its meter (one slot per call).
    let key = unique_key("pro");
    let limits = r#"[{"name":"tokens","limit":1000,"window_secs":86400}]"#;
    assert!(f.store.check(&scenarios::check_costs(&key, &[100], limits)).await.unwrap().admitted);
    let id = scenarios::unique_id();
    assert!(f.store.settle(&scenarios::settle(&key, &id, limits, "[null]", &[100], &[300])).await.unwrap());
    let (meter, marker) = (format!("tg:{{{key}}}"), format!("tg:{{{key}}}:settle:{id}"));
    let holder = cluster.nodes.iter().position(|n| n.cli(&["EXISTS", &meter]).trim() == "1");
    assert!(holder.is_some(), "no master holds {meter}");
    let holders: Vec<usize> =
        (0..cluster.nodes.len()).filter(|&i| cluster.nodes[i].cli(&["EXISTS", &marker]).trim() == "1").collect();
    assert_eq!(holders, holder.into_iter().collect::<Vec<_>>(), "the marker is where its meter is");

    // NOSCRIPT on every master is survived.
    for node in &cluster.nodes {
        assert_eq!(node.cli(&["SCRIPT", "FLUSH"]).trim(), "OK");
    }
    for _ in 0..10 {
        assert!(f.store.check(&check(&unique_key("free"), 1, limits)).await.unwrap().admitted);
    }
    f.store.ping().await.unwrap();
}

/// On a cluster the store's identity is every master's `run_id`: a restarted master changes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_master_changes_the_clusters_identity() {
    let mut cluster = RedisCluster::start();
    let store = RedisStore::open(&cluster.location().parse().unwrap()).unwrap();
    let before = store.instance_id().await.unwrap().unwrap();
    let ids: Vec<&str> = before.split(',').collect();
    assert_eq!(ids.len(), 3, "{before}");
    assert!(ids.iter().all(|id| id.len() == 40 && id.bytes().all(|b| b.is_ascii_hexdigit())), "{before}");
    assert_eq!(store.instance_id().await.unwrap().unwrap(), before, "stable while nothing restarts");

    cluster.nodes[1].restart();
    let mut after = None;
    for _ in 0..200 {
        if let Ok(Some(id)) = store.instance_id().await {
            if id != before {
                after = Some(id);
                break;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let after = after.expect("the identity to change after a master restarted");
    let kept = after.split(',').filter(|id| ids.contains(id)).count();
    assert_eq!(kept, 2, "two masters kept their run_id: {before} -> {after}");
}
