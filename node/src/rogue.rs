//! A misbehaving peer, for tests and test networks only: it joins the
//! federation with its own key and sends forged, replayed, oversized and
//! malformed messages at a target caisse, so that tests can check that every
//! honest node rejects them and keeps running and converging.
//!
//! Reachable as `caisse rogue`; never started by a node.

use std::time::Duration;

use automerge::sync::SyncDoc;
use automerge::transaction::Transactable;
use automerge::{ActorId, ROOT, ScalarValue};
use caisse_protocol::encoding;
use caisse_protocol::messages::DocumentHeads;
use caisse_protocol::rpc::{MAX_RPC_SIZE, RpcRequest, RpcResponse};
use caisse_protocol::{CaisseId, Envelope, FederationId, SecretKey, Signature};
use libp2p::PeerId;
use serde::Serialize;

use crate::network::{self, Network, NetworkConfig, peer_id_of};

/// One kind of misbehaviour.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Attack {
    /// Heads of the target's document, signed by the rogue's key.
    ForgedHeads,
    /// Heads of the rogue's own document with one signature bit flipped.
    BadSignature,
    /// The target's own signed heads, published again.
    Replay,
    /// A request frame over the size limit, and an oversized gossip message.
    Oversized,
    /// Garbage bytes as a request and as gossip.
    Malformed,
    /// A change to the target's document, made with the rogue's actor and
    /// sent to the target through the sync protocol.
    ForgedChange,
    /// Not misbehaviour but a lossy link: one sync round whose answer the
    /// rogue drops, then a fresh session as a node's retry would start. The
    /// report says whether the retry got the whole signed document.
    LostSync,
    /// Heads of a document of its own, each time under a new key minted
    /// for the purpose, pointing at changes nobody can serve: a stranger
    /// trying to fill the documents a node follows.
    Throwaway,
    /// A crowd: as many connections as `--repeat` says, each from a new
    /// peer id, held open for [`CROWD_HOLD`], to take every slot.
    Crowd,
    /// A Kademlia provider record for a new key, announced to the target.
    Providers,
    /// 32 requests at once, each just under the response limit (4 MiB),
    /// to make the target buffer them.
    Large,
    /// 3,000 catalog requests, 16 at a time, as fast as they are answered.
    Flood,
    /// Two different versions of the rogue's own document signed under one
    /// sequence (each round a new sequence): a Byzantine owner showing
    /// different caisses different statements.
    Equivocate,
}

/// How long a crowd holds its connections.
pub const CROWD_HOLD: Duration = Duration::from_secs(25);

impl Attack {
    /// Every attack.
    pub const ALL: [Attack; 6] = [
        Attack::ForgedHeads,
        Attack::BadSignature,
        Attack::Replay,
        Attack::Oversized,
        Attack::Malformed,
        Attack::ForgedChange,
    ];
}

impl std::str::FromStr for Attack {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "forged-heads" => Attack::ForgedHeads,
            "bad-signature" => Attack::BadSignature,
            "replay" => Attack::Replay,
            "oversized" => Attack::Oversized,
            "malformed" => Attack::Malformed,
            "forged-change" => Attack::ForgedChange,
            "lost-sync" => Attack::LostSync,
            "throwaway" => Attack::Throwaway,
            "crowd" => Attack::Crowd,
            "providers" => Attack::Providers,
            "large" => Attack::Large,
            "flood" => Attack::Flood,
            "equivocate" => Attack::Equivocate,
            _ => {
                return Err(format!(
                    "unknown attack {s:?}: forged-heads, bad-signature, replay, oversized, malformed, forged-change, lost-sync, throwaway, crowd, providers, large, flood, equivocate"
                ));
            }
        })
    }
}

/// What one attack did.
#[derive(Clone, Debug, Serialize)]
pub struct AttackReport {
    /// The attack.
    pub attack: Attack,
    /// What was sent and what came back.
    pub detail: String,
}

async fn request(net: &Network, peer: PeerId, req: &RpcRequest) -> Result<RpcResponse, String> {
    let bytes = encoding::encode(req, MAX_RPC_SIZE).map_err(|e| e.to_string())?;
    let resp = net.request(peer, bytes).await?;
    encoding::decode(&resp, MAX_RPC_SIZE).map_err(|e| e.to_string())
}

/// Connect to `target_addr` (with `/p2p/…`) as a new peer and run `attacks`
/// against the caisse `target`, announcing the addresses in `claim` as its
/// own (a third party's, to see whether the target dials them).
pub async fn run(
    target_addr: &str,
    target: CaisseId,
    federation: FederationId,
    attacks: &[Attack],
    seed: [u8; 32],
    repeat: usize,
    claim: &[String],
) -> Result<Vec<AttackReport>, String> {
    let key = SecretKey::from_bytes(seed);
    let (net, mut events, task) = network::start(NetworkConfig {
        secret: seed,
        federation: federation.as_str().to_owned(),
        listen: vec!["/ip4/127.0.0.1/tcp/0".into()],
        bootstrap: vec![target_addr.to_owned()],
        limits: Some((64 * 1024 * 1024, 1024 * 1024)),
        announce: claim.to_vec(),
    })
    .await
    .map_err(|e| e.to_string())?;
    // Drain events in the background (answer nothing).
    let drain = tokio::spawn(async move { while events.recv().await.is_some() {} });
    let peer = peer_id_of(&target).ok_or("bad target caisse id")?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    // Connected means a connection that lasts: a node that has banned us
    // lets the handshake finish, then closes at once (and the network
    // dials its bootstrap peers again every few seconds).
    loop {
        if net.info().await.connected.contains(&peer) {
            tokio::time::sleep(Duration::from_millis(1000)).await;
            if net.info().await.connected.contains(&peer) {
                break;
            }
        }
        if tokio::time::Instant::now() > deadline {
            return Err("could not connect to the target".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Let gossipsub exchange subscriptions before publishing.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut reports = Vec::new();
    let mut minted = 0u64;
    let rounds = repeat.max(1);
    if attacks.contains(&Attack::Crowd) {
        let detail = crowd(target_addr, rounds).await?;
        tracing::info!(%detail, "rogue crowd done");
        reports.push(AttackReport {
            attack: Attack::Crowd,
            detail,
        });
    }
    let plan: Vec<Attack> = (0..rounds)
        .flat_map(|_| attacks.iter().copied())
        .filter(|a| *a != Attack::Crowd)
        .collect();
    for attack in &plan {
        let detail = match attack {
            Attack::ForgedHeads => {
                let m = DocumentHeads {
                    caisse: target,
                    heads: vec![[7; 32]],
                    sequence: u64::MAX / 2,
                    epoch: 0,
                };
                // Sealed by the rogue but claiming the target's document.
                let env = Envelope::seal(&key, &federation, &m).map_err(|e| e.to_string())?;
                let r = net
                    .publish(env.to_bytes().map_err(|e| e.to_string())?)
                    .await;
                format!("published heads for the target's document signed by another key: {r:?}")
            }
            Attack::BadSignature => {
                let m = DocumentHeads {
                    caisse: key.caisse_id(),
                    heads: vec![[8; 32]],
                    sequence: 1,
                    epoch: 0,
                };
                let mut env = Envelope::seal(&key, &federation, &m).map_err(|e| e.to_string())?;
                let mut sig = *env.signature.as_bytes();
                sig[10] ^= 0x01;
                env.signature = Signature::from_bytes(sig);
                let r = net
                    .publish(env.to_bytes().map_err(|e| e.to_string())?)
                    .await;
                format!("published heads with a flipped signature bit: {r:?}")
            }
            Attack::Replay => match request(&net, peer, &RpcRequest::Catalog).await {
                Ok(RpcResponse::Catalog(envs)) => {
                    let mut n = 0;
                    for env in envs {
                        if let Ok(bytes) = env.to_bytes()
                            && net.publish(bytes).await.is_ok()
                        {
                            n += 1;
                        }
                    }
                    format!("re-published {n} signed heads already known")
                }
                other => format!("catalog refused: {other:?}"),
            },
            Attack::Oversized => {
                let big = vec![0u8; network::MAX_FRAME + 1024];
                let r = net.request(peer, big).await;
                let g = net.publish(vec![1u8; 64 * 1024]).await;
                format!(
                    "sent a {} byte request: {}; gossip of 64 KiB: {g:?}",
                    network::MAX_FRAME + 1024,
                    r.err().unwrap_or_else(|| "answered".into())
                )
            }
            Attack::Malformed => {
                let r = net
                    .request(peer, vec![0xde, 0xad, 0xbe, 0xef, 0, 1, 2])
                    .await;
                let g = net.publish(vec![0xff; 100]).await;
                let answer = r
                    .ok()
                    .and_then(|b| encoding::decode::<RpcResponse>(&b, MAX_RPC_SIZE).ok());
                format!("garbage request answered {answer:?}; garbage gossip {g:?}")
            }
            Attack::ForgedChange => {
                // Pull the target's document, change it with our own actor, push the change back.
                let mut doc = automerge::AutoCommit::new();
                let mut state = automerge::sync::State::new();
                for _ in 0..16 {
                    let msg = doc
                        .sync()
                        .generate_sync_message(&mut state)
                        .map(|m| m.encode());
                    let resp = request(
                        &net,
                        peer,
                        &RpcRequest::Sync {
                            caisse: target,
                            session: 1,
                            message: msg,
                        },
                    )
                    .await?;
                    match resp {
                        RpcResponse::Sync {
                            message: Some(m), ..
                        } => {
                            let m =
                                automerge::sync::Message::decode(&m).map_err(|e| e.to_string())?;
                            doc.sync()
                                .receive_sync_message(&mut state, m)
                                .map_err(|e| e.to_string())?;
                        }
                        _ => break,
                    }
                }
                doc.set_actor(ActorId::from(&key.caisse_id().as_bytes()[..]));
                doc.put(ROOT, "profile", ScalarValue::Bytes(b"forged".to_vec()))
                    .map_err(|e| e.to_string())?;
                let mut pushed = 0;
                for _ in 0..8 {
                    let Some(m) = doc.sync().generate_sync_message(&mut state) else {
                        break;
                    };
                    pushed += 1;
                    let resp = request(
                        &net,
                        peer,
                        &RpcRequest::Sync {
                            caisse: target,
                            session: 1,
                            message: Some(m.encode()),
                        },
                    )
                    .await?;
                    if let RpcResponse::Sync {
                        message: Some(m), ..
                    } = resp
                    {
                        let m = automerge::sync::Message::decode(&m).map_err(|e| e.to_string())?;
                        let _ = doc.sync().receive_sync_message(&mut state, m);
                    }
                }
                format!("pushed a forged change to the target's document in {pushed} sync messages")
            }
            Attack::LostSync => lost_sync(&net, peer, target, &federation).await?,
            // Run once, before the plan.
            Attack::Crowd => continue,
            Attack::Large => {
                let sends = (0..32).map(|_| net.request(peer, vec![0x55; network::MAX_FRAME - 64]));
                let answers = futures::future::join_all(sends).await;
                let refused = answers.iter().filter(|a| a.is_err()).count();
                format!("32 requests of 4 MiB at once: {refused} refused")
            }
            Attack::Flood => {
                let (mut answered, mut limited, mut failed) = (0, 0, 0);
                for _ in 0..3000 / 16 {
                    let sends = (0..16).map(|_| request(&net, peer, &RpcRequest::Catalog));
                    for r in futures::future::join_all(sends).await {
                        match r {
                            Ok(RpcResponse::Refused(m)) if m.contains("rate limited") => {
                                limited += 1
                            }
                            Ok(_) => answered += 1,
                            Err(_) => failed += 1,
                        }
                    }
                }
                format!(
                    "flood of catalog requests: {answered} answered, {limited} rate limited, {failed} failed"
                )
            }
            Attack::Providers => {
                minted += 1;
                let mut key = seed.to_vec();
                key.extend_from_slice(&minted.to_le_bytes());
                net.provide(key).await;
                format!("announced provider record {minted}")
            }
            Attack::Equivocate => {
                minted += 1;
                let mut sent = Vec::new();
                for side in [1u8, 2] {
                    let mut head = [side; 32];
                    head[..8].copy_from_slice(&minted.to_le_bytes());
                    let m = DocumentHeads {
                        caisse: key.caisse_id(),
                        heads: vec![head],
                        sequence: minted,
                        epoch: 0,
                    };
                    let env = Envelope::seal(&key, &federation, &m).map_err(|e| e.to_string())?;
                    sent.push(
                        net.publish(env.to_bytes().map_err(|e| e.to_string())?)
                            .await,
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                format!("two versions of its own document signed under sequence {minted}: {sent:?}")
            }
            Attack::Throwaway => {
                minted += 1;
                let mut k = seed;
                k[24..].copy_from_slice(&minted.to_le_bytes());
                let throwaway = SecretKey::from_bytes(k);
                let mut fake = [0u8; 32];
                fake[..8].copy_from_slice(&minted.to_le_bytes());
                let m = DocumentHeads {
                    caisse: throwaway.caisse_id(),
                    heads: vec![fake],
                    sequence: 1,
                    epoch: 0,
                };
                let env = Envelope::seal(&throwaway, &federation, &m).map_err(|e| e.to_string())?;
                let r = net
                    .publish(env.to_bytes().map_err(|e| e.to_string())?)
                    .await;
                // Paced so that the target's queues, not ours, decide
                // what arrives.
                if minted.is_multiple_of(25) {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                format!("heads of a document under throwaway key {minted}: {r:?}")
            }
        };
        tracing::info!(attack = ?attack, %detail, "rogue attack sent");
        reports.push(AttackReport {
            attack: *attack,
            detail,
        });
        if rounds == 1 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    drain.abort();
    task.abort();
    Ok(reports)
}

/// A replica's retry after a lost answer: the rogue syncs the target's
/// document as it is, waits (up to 60 s) for the owner to sign a newer
/// version, sends one round from the older version and drops the answer,
/// then starts a fresh session from the older version, as a node's retry
/// would. The report says whether the retry reached the newest signed heads.
async fn lost_sync(
    net: &Network,
    peer: PeerId,
    target: CaisseId,
    federation: &FederationId,
) -> Result<String, String> {
    let signed_heads = |offered: Option<Envelope>| -> Result<DocumentHeads, String> {
        Ok(offered
            .ok_or("the owner offered no signed heads")?
            .open::<DocumentHeads>(federation)
            .map_err(|e| e.to_string())?
            .message)
    };
    // The owner signs its first heads a moment after it starts.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let (old, first) = loop {
        let (doc, offered) =
            crate::federation::sync_session(net, peer, target, automerge::AutoCommit::new(), &[])
                .await
                .unwrap_or_else(|_| (automerge::AutoCommit::new(), None));
        if offered.is_some() {
            break (doc, signed_heads(offered)?);
        }
        if tokio::time::Instant::now() > deadline {
            return Err("the owner signed no heads within 20 s".into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(RpcResponse::Catalog(envs)) = request(net, peer, &RpcRequest::Catalog).await
            && envs.iter().any(|e| {
                e.open::<DocumentHeads>(federation).is_ok_and(|h| {
                    h.message.caisse == target && h.message.sequence > first.sequence
                })
            })
        {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!(
                "the owner signed nothing newer than sequence {} within 60 s",
                first.sequence
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut older = old.clone();
    let mut state = automerge::sync::State::new();
    let round = older
        .sync()
        .generate_sync_message(&mut state)
        .map(|m| m.encode());
    let dropped = request(
        net,
        peer,
        &RpcRequest::Sync {
            caisse: target,
            session: 2,
            message: round,
        },
    )
    .await?;
    drop(dropped);
    let (mut fork, offered) = crate::federation::sync_session(net, peer, target, old, &[]).await?;
    let signed = signed_heads(offered)?;
    let have = crate::documents::sorted_heads(&mut fork);
    let want = crate::documents::sorted(signed.heads);
    Ok(if have == want {
        format!(
            "resync complete: after a dropped answer, a fresh session from sequence {} reached the owner's signed heads at sequence {}",
            first.sequence, signed.sequence
        )
    } else {
        format!(
            "resync incomplete: after a dropped answer, a fresh session from sequence {} ended with {} heads, not the {} the owner signed at sequence {}",
            first.sequence,
            have.len(),
            want.len(),
            signed.sequence
        )
    })
}

/// `count` connections to `target_addr`, each from a new peer id with
/// nothing to say, held for [`CROWD_HOLD`]. Reports how many were
/// established and how many the target left open.
async fn crowd(target_addr: &str, count: usize) -> Result<String, String> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
    let addr: libp2p::Multiaddr = target_addr.parse().map_err(|e| format!("{e}"))?;
    let open = Arc::new(AtomicI64::new(0));
    let ever = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..count {
        let mut swarm = libp2p::SwarmBuilder::with_new_identity()
            .with_tokio()
            .with_tcp(
                libp2p::tcp::Config::default(),
                libp2p::noise::Config::new,
                libp2p::yamux::Config::default,
            )
            .map_err(|e| e.to_string())?
            .with_behaviour(|_| libp2p::swarm::dummy::Behaviour)
            .map_err(|e| e.to_string())?
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(3600)))
            .build();
        swarm.dial(addr.clone()).map_err(|e| e.to_string())?;
        let (open, ever) = (open.clone(), ever.clone());
        tasks.push(tokio::spawn(async move {
            use futures::StreamExt;
            loop {
                match swarm.select_next_some().await {
                    libp2p::swarm::SwarmEvent::ConnectionEstablished { .. } => {
                        open.fetch_add(1, Ordering::Relaxed);
                        ever.fetch_add(1, Ordering::Relaxed);
                    }
                    libp2p::swarm::SwarmEvent::ConnectionClosed { .. } => {
                        open.fetch_sub(1, Ordering::Relaxed);
                    }
                    _ => {}
                }
            }
        }));
        // A crowd, not a single burst the listener's backlog would cut.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(CROWD_HOLD).await;
    let report = format!(
        "crowd of {count}: {} connections established, {} still open after {} s",
        ever.load(Ordering::Relaxed),
        open.load(Ordering::Relaxed),
        CROWD_HOLD.as_secs()
    );
    for t in tasks {
        t.abort();
    }
    Ok(report)
}
