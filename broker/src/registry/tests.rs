use super::*;

const LIMITS: ClaimLimits = ClaimLimits {
    connections_per_user: 4,
    max_connections: 100,
    sessions_per_user: 2,
};

fn reg() -> Registry {
    Registry::new(HashMap::from([
        ("chat-bridge".to_owned(), "chat-bridge".to_owned()),
        ("pusher-1".to_owned(), "pusher".to_owned()),
    ]))
}

async fn claim(r: &Registry, id: &str, user: &str, persistent: bool) -> Result<Claim, ClaimError> {
    r.claim(id, user, persistent, &LIMITS).await
}

#[tokio::test]
async fn a_live_id_is_refused_to_another_user() {
    let r = reg();
    let c = claim(&r, "x", "alice", false).await.expect("alice");
    assert_eq!(
        claim(&r, "x", "bob", false).await.err(),
        Some(ClaimError::InUse)
    );
    assert_eq!(
        claim(&r, "x", "bob", true).await.err(),
        Some(ClaimError::InUse)
    );
    assert!(c.finish(), "alice's last connection");
    // a clean session's id is free once it ends
    claim(&r, "x", "bob", false)
        .await
        .expect("bob after alice left");
}

#[tokio::test]
async fn a_persistent_session_stays_its_owners_while_offline() {
    let r = reg();
    let c = claim(&r, "alice-1", "alice", true).await.expect("alice");
    c.finish();
    assert_eq!(r.connections_of("alice"), 0);
    assert_eq!(r.sessions_of("alice"), 1);
    for persistent in [true, false] {
        assert_eq!(
            claim(&r, "alice-1", "bob", persistent).await.err(),
            Some(ClaimError::InUse),
            "bob, persistent {persistent}"
        );
    }
    // alice resumes it, then ends it with a clean session
    claim(&r, "alice-1", "alice", true)
        .await
        .expect("resume")
        .finish();
    let c = claim(&r, "alice-1", "alice", false).await.expect("clean");
    assert_eq!(
        r.sessions_of("alice"),
        1,
        "kept until the router has the clean link"
    );
    c.session_cleared();
    assert_eq!(r.sessions_of("alice"), 0);
    assert_eq!(
        claim(&r, "alice-1", "bob", false).await.err(),
        Some(ClaimError::InUse),
        "still alice's while her clean connection lasts"
    );
    c.finish();
    claim(&r, "alice-1", "bob", true)
        .await
        .expect("free once it ended");
}

#[tokio::test]
async fn a_clean_connect_that_never_reached_the_router_keeps_the_session() {
    let r = reg();
    claim(&r, "alice-1", "alice", true)
        .await
        .expect("alice")
        .finish();
    // clean connect, but the router link failed: no session_cleared()
    drop(claim(&r, "alice-1", "alice", false).await.expect("clean"));
    assert_eq!(r.sessions_of("alice"), 1);
    assert_eq!(
        claim(&r, "alice-1", "bob", false).await.err(),
        Some(ClaimError::InUse)
    );
}

#[tokio::test]
async fn reserved_ids_belong_to_their_account_only() {
    let r = reg();
    for (id, user) in [
        ("chat-bridge", "mallory"),
        ("pusher-1", "mallory"),
        ("pusher-1", "chat-bridge"),
    ] {
        for persistent in [true, false] {
            assert_eq!(
                claim(&r, id, user, persistent).await.err(),
                Some(ClaimError::Reserved),
                "{user} on {id}"
            );
        }
    }
    let c = claim(&r, "chat-bridge", "chat-bridge", true)
        .await
        .expect("the bridge");
    c.finish();
    assert_eq!(
        claim(&r, "chat-bridge", "mallory", false).await.err(),
        Some(ClaimError::Reserved)
    );
    claim(&r, "pusher-1", "pusher", false)
        .await
        .expect("the pusher");
}

#[tokio::test]
async fn persistent_sessions_per_user_are_bounded() {
    let r = reg();
    claim(&r, "a-1", "alice", true).await.expect("1").finish();
    claim(&r, "a-2", "alice", true).await.expect("2").finish();
    assert_eq!(
        claim(&r, "a-3", "alice", true).await.err(),
        Some(ClaimError::SessionLimit)
    );
    // resuming one and clean sessions are not limited
    claim(&r, "a-1", "alice", true)
        .await
        .expect("resume")
        .finish();
    claim(&r, "a-3", "alice", false)
        .await
        .expect("clean")
        .finish();
    // another user has quota of their own
    claim(&r, "b-1", "bob", true).await.expect("bob").finish();
    // ending one frees a slot
    let c = claim(&r, "a-2", "alice", false)
        .await
        .expect("clean on a-2");
    c.session_cleared();
    c.finish();
    claim(&r, "a-3", "alice", true)
        .await
        .expect("a slot was freed");
}

#[tokio::test]
async fn the_owner_takes_over_a_live_session() {
    let r = reg();
    let old = claim(&r, "alice-1", "alice", true).await.expect("first");
    let stop = old.stop.clone();
    let stopped = tokio::spawn(async move {
        stop.notified().await;
        old.finish()
    });
    let new = claim(&r, "alice-1", "alice", true).await.expect("takeover");
    assert!(
        stopped.await.expect("old task"),
        "the old one was alice's only connection"
    );
    assert!(new.first_of_user);
    assert_eq!(r.connections_of("alice"), 1);
    assert_eq!(r.sessions_of("alice"), 1);
    assert_eq!(r.total(), 1);
}

#[tokio::test]
async fn connection_limits_still_apply() {
    let r = reg();
    let tight = ClaimLimits {
        connections_per_user: 1,
        max_connections: 2,
        sessions_per_user: 8,
    };
    let _a = r.claim("a-1", "alice", false, &tight).await.expect("a");
    assert_eq!(
        r.claim("a-2", "alice", false, &tight).await.err(),
        Some(ClaimError::UserLimit)
    );
    let _b = r.claim("b-1", "bob", false, &tight).await.expect("b");
    assert_eq!(
        r.claim("c-1", "carol", false, &tight).await.err(),
        Some(ClaimError::ServerFull)
    );
}
