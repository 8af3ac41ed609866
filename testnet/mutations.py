#!/usr/bin/env python3
"""The simulator's mutation table (docs/SIMULATOR.md): put each bug in the
core on purpose, one at a time, build, run 100 seeds of the chaos profile
(the disk profile for the mutations only it reaches),
report how many seeds caught it, and restore the source.

    python3 testnet/mutations.py                 # every mutation (~15 min)
    python3 testnet/mutations.py home_skips_idempotency
"""
import subprocess, re, sys, shutil
import os
HERE=os.path.dirname(os.path.abspath(__file__))
TOP=os.path.dirname(HERE)
ROOT=os.path.join(TOP,'node','core','src')+'/'
muts=[
 ("home_skips_idempotency","settlement.rs","""        let pkey = keys::key(keys::PURCHASE, &[req.id.as_bytes()]);
        if let Some(bytes) = self.get(&pkey)? {""","""        let pkey = keys::key(keys::PURCHASE, &[req.id.as_bytes()]);
        if let Some(bytes) = self.get(&pkey)?.filter(|_| false) {"""),
 ("local_purchase_skips_idempotency","caisse.rs","""        let pkey = keys::key(keys::PURCHASE, &[input.id.as_bytes()]);
        if let Some(bytes) = self.get(&pkey)? {""","""        let pkey = keys::key(keys::PURCHASE, &[input.id.as_bytes()]);
        if let Some(bytes) = self.get(&pkey)?.filter(|_| false) {"""),
 ("offline_floor_not_enforced","settlement.rs","        if after > floor {","        if after > floor && false {"),
 ("offline_refusal_books_no_loss","settlement.rs","""            loss(self, p.allocation_part, format!("{:?}", d.message.reason))?;""","""            let _ = &d;"""),
 ("host_accepts_receipt_for_another_request","settlement.rs","if r.home != home || r.host != self.id || r.purchase != input.id || r.request != request_id","if r.home != home || r.host != self.id || r.purchase != input.id"),
 ("allocation_index_not_written","caisse.rs","        self.pending.put(key, encode_value(&seq));\n        run.issued","        let _ = (key, seq);\n        run.issued"),
 ("retry_resigns_a_new_request","settlement.rs","        if let Some(bytes) = self.get(&fkey)? {\n            let (hash, env)","        if let Some(bytes) = self.get(&fkey)?.filter(|_| false) {\n            let (hash, env)"),
 ("home_keeps_no_issued_receipt","settlement.rs","            issued_key(&req.id),\n","            issued_key(&PurchaseId::from_bytes([0; 16])),\n"),
 ("both_overdraft_guards_off","caisse.rs","if matches!(a, Account::Member(_) | Account::Outlet(_)) && b.is_negative() {","if matches!(a, Account::Member(_) | Account::Outlet(_)) && b.is_negative() && false {"),
 ("overdraft_guard_in_append_off","caisse.rs","if matches!(a, Account::Member(_) | Account::Outlet(_)) && b.is_negative() {","if matches!(a, Account::Member(_) | Account::Outlet(_)) && b.is_negative() && false {"),
 ("purchase_overdraft_of_one_cent","caisse.rs","        if available < allocation_part {","        if available.checked_add(Amount::from_cents(1)).unwrap_or(available) < allocation_part {"),
 ("pin_counter_reset_on_cross_success","settlement.rs","""                request: request_id,
            }),
        );
        Ok(env)""","""                request: request_id,
            }),
        );
        if let Some(mut c) = self.cards.get(&req.card).cloned() {
            c.failed_attempts = 0;
            self.save_card(c);
        }
        Ok(env)"""),
 ("locked_card_accepted_at_home","settlement.rs","        if card.locked {\n            return decline(self, DeclineReason::CardLocked);","        if card.locked && false {\n            return decline(self, DeclineReason::CardLocked);"),
 ("wrong_pin_not_counted_at_home","settlement.rs","let (locked, _) = self.count_wrong_pin(&req.card, now);","let (locked, _) = (false, 0u8);"),
 ("right_pin_resets_counter_at_a_local_till","caisse.rs","""        if pin.is_some_and(|p| pin_hash(&self.pepper, &card.salt, p) == expected) {
            return Ok(member);""","""        if pin.is_some_and(|p| pin_hash(&self.pepper, &card.salt, p) == expected) {
            let mut c = card.clone();
            c.failed_attempts = 0;
            self.save_card(c);
            return Ok(member);"""),
 ("statement_drops_a_receipt","settlement.rs","            let ids: Vec<PurchaseId> = receipts.iter().map(|r| r.purchase).collect();\n            let amount = Amount::checked_sum(","            let ids: Vec<PurchaseId> = receipts.iter().skip(1).map(|r| r.purchase).collect();\n            let amount = Amount::checked_sum("),
 ("debtor_acknowledges_without_comparing","settlement.rs","            let env = if receipts_hash(&our_ids) == st.receipts","            let env = if true || receipts_hash(&our_ids) == st.receipts"),
 ("transfers_never_confirmed","settlement.rs",".filter(|(_, t)| t.to == self.id && t.period == period)",".filter(|(_, t)| t.to == self.id && t.period == period && false)"),
 ("rollback_disabled","caisse.rs","""        let Some(mark) = self.savepoints.marks.pop() else {
            return;
        };""","""        let Some(mark) = self.savepoints.marks.pop() else {
            return;
        };
        if self.savepoints.marks.is_empty() {
            self.forget_undo();
            return;
        }"""),
]
# Mutations the chaos profile cannot reach, with the profile that can.
disk_muts=[
 ("home_ignores_revocations","settlement.rs","                                a.revocation.is_none()\n                                    && a.accreditation.caisse == req.host","                                (a.revocation.is_none() || true)\n                                    && a.accreditation.caisse == req.host"),
 ("reader_takes_entries_signed_by_others","federation_view.rs","    (v.signer.caisse_id() == *owner).then_some((v.id, v.message))","    (v.signer.caisse_id() == *owner || true).then_some((v.id, v.message))"),
 ("home_ignores_recognition","settlement.rs","        if !recognised {\n            return decline(","        if !recognised && false {\n            return decline("),
 ("equivocation_keeps_the_first","replication.rs","            take: offered.digest < known.digest,","            take: false && offered.digest < known.digest,"),
 ("equivocation_keeps_the_latest","replication.rs","            take: offered.digest < known.digest,","            take: true || offered.digest < known.digest,"),
]
only=sys.argv[1:] 
for name,f,old,new,profile in [m+("chaos",) for m in muts]+[m+("disk",) for m in disk_muts]:
    if only and name not in only: continue
    path=ROOT+f
    src=open(path).read()
    pairs=[(old,new)]
    if name=="both_overdraft_guards_off":
        pairs.append(("        if available < allocation_part {","        if available.checked_add(Amount::from_cents(1)).unwrap_or(available) < allocation_part {"))
    out=src
    bad=False
    for o,n in pairs:
        if out.count(o)!=1:
            print(name,"PATTERN COUNT",out.count(o)); bad=True
        out=out.replace(o,n)
    if bad: continue
    open(path,'w').write(out)
    try:
        b=subprocess.run(f"cd '{TOP}' && cargo build -q -p caisse-testnet 2>&1",shell=True,capture_output=True,text=True)
        if b.returncode!=0:
            print(name,"BUILD FAILED",b.stdout[-500:]); continue
        r=subprocess.run(f"cd '{TOP}' && ./target/debug/caisse-testnet sim --seeds 0..100 --faults {profile} 2>&1",shell=True,capture_output=True,text=True)
        seeds=[int(x) for x in re.findall(r"seed (\d+) FAILED",r.stdout)]
        first=re.search(r"seed \d+ FAILED:\n  - (.*)",r.stdout)
        print(f"{name}: {len(seeds)}/100 seeds failed; first failing seed {seeds[0] if seeds else '-'}; {first.group(1)[:160] if first else ''}",flush=True)
    finally:
        open(path,'w').write(src)
