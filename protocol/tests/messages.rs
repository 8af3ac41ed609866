//! Property tests over every wire message: encoding round-trips, and any
//! change to signed bytes or signatures is rejected.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::arithmetic_side_effects
)]

use caisse_protocol::criteria::{Criteria, Rule};
use caisse_protocol::encoding;
use caisse_protocol::messages::*;
use caisse_protocol::signed::{Message, VerifyError};
use caisse_protocol::*;
use proptest::prelude::*;

fn fed() -> FederationId {
    FederationId::new("test-federation").unwrap()
}

fn key(seed: u8) -> SecretKey {
    SecretKey::from_bytes([seed; 32])
}

fn amount() -> impl Strategy<Value = Amount> {
    (0i64..10_000_000).prop_map(Amount::from_cents)
}
fn text() -> impl Strategy<Value = String> {
    "[a-zA-Zéà 0-9'-]{0,40}"
}
fn b16() -> impl Strategy<Value = [u8; 16]> {
    any::<[u8; 16]>()
}
fn b32() -> impl Strategy<Value = [u8; 32]> {
    any::<[u8; 32]>()
}
fn content() -> impl Strategy<Value = ContentId> {
    b32().prop_map(ContentId::from_bytes)
}
fn period() -> impl Strategy<Value = Period> {
    (2020u16..2040, 1u8..=12).prop_map(|(y, m)| Period::new(y, m).unwrap())
}
fn day() -> impl Strategy<Value = Day> {
    (18_000u32..25_000).prop_map(Day::from_days)
}
fn category() -> impl Strategy<Value = Category> {
    "[a-z][a-z0-9-]{0,15}".prop_map(|s| Category::new(&s).unwrap())
}
fn lines() -> impl Strategy<Value = Vec<PurchaseLine>> {
    prop::collection::vec(
        (category(), prop::option::of(b16()), amount()).prop_map(|(category, p, amount)| {
            PurchaseLine {
                category,
                producer: p.map(ProducerId::from_bytes),
                amount,
            }
        }),
        1..6,
    )
}

/// Seal a message as its author (key seed chosen by the caller) and check
/// the properties every message type must have.
fn check_message<T: Message + Clone + PartialEq + std::fmt::Debug>(
    msg: T,
    signer: &SecretKey,
    flip_at: usize,
    flip_bit: u8,
) -> Result<(), TestCaseError> {
    // Encoding round-trip, canonical.
    let bytes = encoding::encode(&msg, T::MAX_SIZE).unwrap();
    let back: T = encoding::decode(&bytes, T::MAX_SIZE).unwrap();
    prop_assert_eq!(&back, &msg);
    let mut trailing = bytes.clone();
    trailing.push(0);
    prop_assert!(encoding::decode::<T>(&trailing, T::MAX_SIZE).is_err());
    prop_assert!(encoding::decode::<T>(&bytes, bytes.len() - 1).is_err());

    // Sign, send as wire bytes, open.
    let env = Envelope::seal(signer, &fed(), &msg).unwrap();
    let wire = env.to_bytes().unwrap();
    let received = Envelope::from_bytes(&wire).unwrap();
    let opened = received.open::<T>(&fed()).unwrap();
    prop_assert_eq!(&opened.message, &msg);
    prop_assert_eq!(opened.id, received.content_id(&fed(), T::VERSION));
    // Opened again, from the memo of verified signatures: the same; the
    // tampered copies below come after it and must still be refused.
    prop_assert_eq!(&received.open::<T>(&fed()).unwrap().message, &msg);

    // Another federation's signature is worthless here.
    let other = FederationId::new("other-federation").unwrap();
    let refused = matches!(received.open::<T>(&other), Err(VerifyError::BadSignature));
    prop_assert!(
        refused,
        "a signature from another federation must be refused"
    );

    // Any single-bit change to the body is rejected.
    let mut tampered = env.clone();
    let i = flip_at % tampered.body.len();
    tampered.body[i] ^= 1 << (flip_bit % 8);
    prop_assert!(tampered.open::<T>(&fed()).is_err());

    // Any single-bit change to the signature is rejected.
    let mut sig = *env.signature.as_bytes();
    sig[flip_at % 64] ^= 1 << (flip_bit % 8);
    let mut tampered = env.clone();
    tampered.signature = Signature::from_bytes(sig);
    prop_assert!(tampered.open::<T>(&fed()).is_err());

    // Signed by someone else: rejected even with a valid signature.
    let forged = Envelope::seal(&key(250), &fed(), &msg).unwrap();
    let mismatch = matches!(
        forged.open::<T>(&fed()),
        Err(VerifyError::SignerMismatch { .. })
    );
    prop_assert!(
        mismatch,
        "a statement signed by another key must be refused"
    );

    // Any single-bit change to the wire bytes is refused somewhere.
    let mut wire2 = wire.clone();
    let j = flip_at % wire2.len();
    wire2[j] ^= 1 << (flip_bit % 8);
    if let Ok(e) = Envelope::from_bytes(&wire2) {
        prop_assert!(e.open::<T>(&fed()).is_err());
    }
    Ok(())
}

fn author_key() -> SecretKey {
    key(1)
}
fn author() -> CaisseId {
    author_key().caisse_id()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn profile(name in text(), territory in text(), at in any::<u64>(), i in any::<usize>(), b in any::<u8>()) {
        let m = CaisseProfile { caisse: author(), name, territory, currency_unit: "EUR".into(), issued_at: at };
        check_message(m, &author_key(), i, b)?;
    }

    #[test]
    fn criteria_version(v in any::<u32>(), km in prop::option::of(0u32..500), d in day(), i in any::<usize>(), b in any::<u8>()) {
        let criteria = Criteria {
            name: "Criteria".into(), version: v, local_distance_km: km,
            rule: Rule::All(vec![Rule::Label(Category::new("organic").unwrap()), Rule::MaxDistanceKm(150)]),
        };
        let m = CriteriaVersion { caisse: author(), criteria, adopted_on: d, decided_by: None };
        check_message(m, &author_key(), i, b)?;
    }

    #[test]
    fn accreditation(p in b16(), outlet in any::<bool>(), name in text(),
                     scope in prop::collection::vec((category(), 0u8..=100), 1..5),
                     crit in content(), from in day(), len in 0u32..1000, prop_id in prop::option::of(b16()),
                     i in any::<usize>(), b in any::<u8>()) {
        let subject = if outlet { Subject::Outlet(OutletId::from_bytes(p)) } else { Subject::Producer(ProducerId::from_bytes(p)) };
        let m = Accreditation {
            caisse: author(), subject, subject_name: name,
            scope: scope.into_iter().map(|(category, coverage_pct)| ScopeItem { category, coverage_pct }).collect(),
            criteria: crit, valid_from: from, valid_until: from.plus(len),
            decided_by: prop_id.map(ProposalId::from_bytes),
        };
        check_message(m, &author_key(), i, b)?;
    }

    #[test]
    fn revocation(acc in content(), reason in text(), d in day(), i in any::<usize>(), b in any::<u8>()) {
        let m = Revocation { caisse: author(), accreditation: acc, reason, effective: d, decided_by: None };
        check_message(m, &author_key(), i, b)?;
    }

    #[test]
    fn purchase_request(id in b16(), card in b16(), outlet in b16(), lines in lines(), pin in prop::option::of("[0-9]{4}"), at in any::<u64>(), i in any::<usize>(), b in any::<u8>()) {
        let total = Amount::checked_sum(lines.iter().map(|l| l.amount)).unwrap();
        let m = PurchaseRequest {
            id: PurchaseId::from_bytes(id), host: author(), card: CardId::from_bytes(card),
            outlet: OutletId::from_bytes(outlet), coverage_pct: vec![100; lines.len()], lines, total,
            auth: pin.map_or(CardAuth::None, CardAuth::Pin), at,
        };
        check_message(m, &author_key(), i, b)?;
    }

    #[test]
    fn purchase_receipt(id in b16(), req in content(), host in b32(), card in b16(), outlet in b16(), a in amount(), r in amount(), p in period(), at in any::<u64>(), i in any::<usize>(), b in any::<u8>()) {
        let m = PurchaseReceipt {
            purchase: PurchaseId::from_bytes(id), request: req, home: author(), host: CaisseId::from_bytes(host),
            card: CardId::from_bytes(card), outlet: OutletId::from_bytes(outlet),
            allocation_part: a, member_part: r, period: p, at,
        };
        check_message(m, &author_key(), i, b)?;
    }

    #[test]
    fn purchase_decline(id in b16(), req in content(), which in 0u8..8, a in amount(), detail in text(), at in any::<u64>(), i in any::<usize>(), b in any::<u8>()) {
        let reason = match which {
            0 => DeclineReason::InsufficientBalance { available: a },
            1 => DeclineReason::UnknownCard,
            2 => DeclineReason::SuspendedCard,
            3 => DeclineReason::CardLocked,
            4 => DeclineReason::WrongPin,
            5 => DeclineReason::NotRecognised { detail },
            6 => DeclineReason::InvalidRequest { detail },
            _ => DeclineReason::ConflictingRetry,
        };
        let m = PurchaseDecline { purchase: PurchaseId::from_bytes(id), request: req, home: author(), reason, at };
        check_message(m, &author_key(), i, b)?;
    }

    #[test]
    fn settlement_statement(debtor in b32(), p in period(), a in amount(), count in any::<u64>(), ids in prop::collection::vec(b16(), 0..20), at in any::<u64>(), i in any::<usize>(), b in any::<u8>()) {
        prop_assume!(debtor != *author().as_bytes());
        let ids: Vec<PurchaseId> = ids.into_iter().map(PurchaseId::from_bytes).collect();
        let m = SettlementStatement {
            creditor: author(), debtor: CaisseId::from_bytes(debtor), period: p, amount: a, count,
            receipts: receipts_hash(&ids), at,
        };
        check_message(m, &author_key(), i, b)?;
    }

    #[test]
    fn acknowledgement(s in content(), at in any::<u64>(), i in any::<usize>(), b in any::<u8>()) {
        check_message(Acknowledgement { statement: s, by: author(), at }, &author_key(), i, b)?;
    }

    #[test]
    fn dispute(s in content(), x in prop::collection::vec(b16(), 0..10), y in prop::collection::vec(b16(), 0..10), at in any::<u64>(), i in any::<usize>(), b in any::<u8>()) {
        let m = Dispute {
            statement: s, by: author(),
            unknown_to_debtor: x.into_iter().map(PurchaseId::from_bytes).collect(),
            missing_from_statement: y.into_iter().map(PurchaseId::from_bytes).collect(), at,
        };
        check_message(m, &author_key(), i, b)?;
    }

    #[test]
    fn transfer_settled(p in period(), to in b32(), a in amount(), reference in text(), at in any::<u64>(), i in any::<usize>(), b in any::<u8>()) {
        let m = TransferSettled { period: p, from: author(), to: CaisseId::from_bytes(to), amount: a, reference, at };
        check_message(m, &author_key(), i, b)?;
    }

    #[test]
    fn decision(prop_id in b16(), summary in text(), passed in any::<bool>(), yes in 0u32..100, no in 0u32..100, d in day(), i in any::<usize>(), b in any::<u8>()) {
        let m = Decision { caisse: author(), proposal: ProposalId::from_bytes(prop_id), summary, passed, yes, no, abstain: 1, seats: 200, decided_on: d };
        check_message(m, &author_key(), i, b)?;
    }

    #[test]
    fn document_heads(heads in prop::collection::vec(b32(), 1..5), seq in any::<u64>(), i in any::<usize>(), b in any::<u8>()) {
        check_message(DocumentHeads { caisse: author(), heads, sequence: seq, epoch: (seq % 7) as u32 }, &author_key(), i, b)?;
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(env) = Envelope::from_bytes(&bytes) {
            let _ = env.open::<PurchaseRequest>(&fed());
            let _ = env.open::<Accreditation>(&fed());
        }
        let _ = encoding::decode::<PurchaseReceipt>(&bytes, 1024);
        let _ = encoding::decode::<Criteria>(&bytes, 16 * 1024);
    }
}

#[test]
fn oversized_and_wrong_kind_are_refused() {
    let k = author_key();
    let m = Acknowledgement {
        statement: ContentId::of(b"x"),
        by: author(),
        at: 1,
    };
    let env = Envelope::seal(&k, &fed(), &m).unwrap();
    assert!(matches!(
        env.open::<Revocation>(&fed()),
        Err(VerifyError::WrongKind { .. })
    ));
    let mut big = env.clone();
    big.body = vec![0; Acknowledgement::MAX_SIZE + 1];
    assert!(matches!(
        big.open::<Acknowledgement>(&fed()),
        Err(VerifyError::Decode(_))
    ));
    let huge = vec![0u8; signed::MAX_ENVELOPE_SIZE + 1];
    assert!(Envelope::from_bytes(&huge).is_err());
}

#[test]
fn invalid_purchase_totals_are_refused_after_verifying() {
    let k = author_key();
    let line = PurchaseLine {
        category: Category::new("dairy").unwrap(),
        producer: None,
        amount: Amount::from_cents(500),
    };
    let m = PurchaseRequest {
        id: PurchaseId::from_bytes([1; 16]),
        host: author(),
        card: CardId::from_bytes([2; 16]),
        outlet: OutletId::from_bytes([3; 16]),
        lines: vec![line],
        total: Amount::from_cents(499),
        coverage_pct: vec![100],
        auth: CardAuth::None,
        at: 0,
    };
    let env = Envelope::seal(&k, &fed(), &m).unwrap();
    let err = env.open::<PurchaseRequest>(&fed()).unwrap_err();
    assert!(err.to_string().contains("not the sum"), "{err}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn rpc_frames_round_trip(msg in prop::option::of(prop::collection::vec(any::<u8>(), 0..300)), pick in 0u8..4, s in content(), at in any::<u64>()) {
        use caisse_protocol::rpc::*;
        let env = Envelope::seal(&author_key(), &fed(), &Acknowledgement { statement: s, by: author(), at }).unwrap();
        let req = match pick {
            0 => RpcRequest::Sync { caisse: author(), session: at, message: msg.clone() },
            1 => RpcRequest::Receipts(vec![PurchaseId::from_bytes([pick; 16])]),
            2 => RpcRequest::Catalog,
            _ => RpcRequest::Purchase(env.clone()),
        };
        let bytes = encoding::encode(&req, MAX_RPC_SIZE).unwrap();
        prop_assert_eq!(encoding::decode::<RpcRequest>(&bytes, MAX_RPC_SIZE).unwrap(), req);
        let resp = match pick {
            0 => RpcResponse::Sync { message: msg, heads: Some(env) },
            1 => RpcResponse::Purchase(env),
            2 => RpcResponse::Receipts(vec![env, Envelope::seal(&author_key(), &fed(), &Acknowledgement { statement: s, by: author(), at: 0 }).unwrap()]),
            _ => RpcResponse::Refused("no".into()),
        };
        let bytes = encoding::encode(&resp, MAX_RPC_SIZE).unwrap();
        prop_assert_eq!(encoding::decode::<RpcResponse>(&bytes, MAX_RPC_SIZE).unwrap(), resp);
    }
}

proptest! {
    #[test]
    fn split_lines_adds_up(lines in lines(), pcts in prop::collection::vec(0u8..=100, 6)) {
        let coverage = &pcts[..lines.len()];
        let (alloc, member) = split_lines(&lines, coverage).unwrap();
        let total = Amount::checked_sum(lines.iter().map(|l| l.amount)).unwrap();
        prop_assert_eq!(alloc.checked_add(member).unwrap(), total);
        prop_assert!(!alloc.is_negative() && !member.is_negative());
        if coverage.iter().all(|p| *p == 100) {
            prop_assert_eq!(alloc, total);
        }
    }
}

#[test]
fn scopes_read_as_people_write_them() {
    use caisse_protocol::messages::ScopeItem;
    let s = ScopeItem::parse_list("fresh-produce:100, bread:66%,dairy").expect("scope");
    let got: Vec<(String, u8)> = s
        .iter()
        .map(|i| (i.category.to_string(), i.coverage_pct))
        .collect();
    assert_eq!(
        got,
        vec![
            ("fresh-produce".into(), 100),
            ("bread".into(), 66),
            ("dairy".into(), 100)
        ]
    );
    for bad in ["", "bread:101", "bread:x", "Bread", "bread,bread:50"] {
        assert!(ScopeItem::parse_list(bad).is_err(), "{bad:?} accepted");
    }
}
