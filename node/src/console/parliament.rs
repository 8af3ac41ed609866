//! The parliament page: seats and their composition (with the rule that
//! at least half are citizens), proposals with their text and, for criteria,
//! what they change, votes and tallies, decisions. The admin records votes
//! for any seat (as the parliament's secretary) and closes votes; a member
//! holding a seat votes for that seat only; the observer reads.

use caisse_core::command::{Command, Reply};
use caisse_core::view::Reads;

use crate::writer::reply;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use caisse_protocol::{Day, ProposalId};

use super::ConsoleState;
use super::html::{Flash, Lang, csrf_field, esc};
use super::session::Who;
use super::{Kind, Posted, Visitor};
use crate::parliament::{Choice, Proposal, ProposalKind, Seat, SeatKind};
use crate::policy::ParliamentRules;

struct Data {
    /// Each proposal's subject, by name, when it names a producer or outlet.
    subjects: std::collections::BTreeMap<ProposalId, String>,
    seats: Vec<(Seat, Option<String>)>,
    problem: Option<String>,
    rules: ParliamentRules,
    proposals: Vec<Proposal>,
    criteria: Option<caisse_protocol::criteria::Criteria>,
    /// What the admin's proposal forms offer (admin only).
    choices: Option<super::propose::Choices>,
    now: u64,
}

/// The seat a signed-in member holds, if any.
async fn member_seat(s: &ConsoleState, member: caisse_protocol::MemberId) -> Option<u32> {
    s.handle
        .read(move |c, _| Ok(c.seat_of(&member)?))
        .await
        .ok()
        .flatten()
}

/// Who may see the page, and for which seat they vote (admins: any).
async fn access(v: &Visitor, s: &ConsoleState) -> Result<(Who, Option<u32>), Response> {
    let who = v.require(s, &[Kind::Admin, Kind::Observer, Kind::Member, Kind::Seat])?;
    if let Who::Seat { seat } = &who {
        let seat = *seat;
        let active = s
            .handle
            .read(move |c, _| Ok(c.seat_is_active(seat)?))
            .await
            .unwrap_or(false);
        return if active {
            Ok((who, Some(seat)))
        } else {
            Err(v.error(
                s,
                StatusCode::FORBIDDEN,
                v.t(
                    "This seat has been removed from the parliament: its token no longer votes.",
                    "Ce siège a été retiré du parlement : son jeton ne permet plus de voter.",
                ),
            ))
        };
    }
    if let Who::Member { member, .. } = &who {
        return match member_seat(s, *member).await {
            Some(seat) => Ok((who, Some(seat))),
            None => Err(v.error(
                s,
                StatusCode::FORBIDDEN,
                v.t(
                    "The parliament page is open to seat holders: you do not hold a seat. The open votes are listed on your page.",
                    "La page du parlement est ouverte aux membres qui y siègent : vous n'y avez pas de siège. Les votes en cours figurent sur votre page.",
                ),
            )),
        };
    }
    Ok((who, None))
}

/// `GET /parliament`
pub async fn page(v: Visitor, State(s): State<ConsoleState>) -> Response {
    let (who, seat) = match access(&v, &s).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let admin = who == Who::Admin;
    let data = s
        .handle
        .read(move |c, now| {
            let seats = c.seats()?;
            let problem = crate::parliament::composition_problem(&seats);
            let named = seats
                .into_iter()
                .map(|x| {
                    // Members' names are shown to the admin only.
                    let name = match (admin, x.member) {
                        (true, Some(m)) => c.member_record(&m).ok().map(|r| r.name),
                        _ => None,
                    };
                    (x, name)
                })
                .collect();
            let proposals = c.proposals()?;
            let subjects = proposals
                .iter()
                .filter_map(|p| match &p.kind {
                    ProposalKind::Accredit { subject, .. } => Some((p.id, c.subject_name(subject))),
                    _ => None,
                })
                .collect();
            Ok(Data {
                subjects,
                seats: named,
                problem,
                rules: c.policy().parliament.clone(),
                proposals,
                criteria: c
                    .conventions()
                    .criteria()
                    .map(|r| r.version.criteria.clone()),
                choices: admin.then(|| super::propose::Choices::of(c, Day::from_unix(now))),
                now,
            })
        })
        .await;
    match data {
        Ok(d) => {
            let body = render(&v, &d, &who, seat);
            v.page(
                &s,
                StatusCode::OK,
                v.t("Food parliament", "Parlement de l'alimentation"),
                &body,
            )
        }
        Err(e) => v.unavailable(&s, &e),
    }
}

fn kind_name(l: Lang, k: SeatKind) -> &'static str {
    match k {
        SeatKind::Citizen => l.t("citizen", "citoyen·ne"),
        SeatKind::Producer => l.t("producer", "producteur·rice"),
        SeatKind::Worker => l.t("food worker", "travailleur·se de l'alimentation"),
    }
}

fn choice_name(l: Lang, c: Choice) -> &'static str {
    match c {
        Choice::Yes => l.t("yes", "pour"),
        Choice::No => l.t("no", "contre"),
        Choice::Abstain => l.t("abstain", "abstention"),
    }
}

/// What a proposal would do, in the visitor's words.
fn describe(l: Lang, kind: &ProposalKind, subject: Option<&String>) -> String {
    use crate::policy::{AllocationPolicy, RecognitionPolicy, Rollover};
    let m = |a: &caisse_protocol::Amount| super::html::money(l, *a);
    match kind {
        ProposalKind::Criteria(c) => match l {
            Lang::Fr => format!("Adopter les critères « {} », version {}", c.name, c.version),
            Lang::En => format!("Adopt the criteria \"{}\", version {}", c.name, c.version),
        },
        ProposalKind::Allocation(AllocationPolicy::PerPerson { amount }) => match l {
            Lang::Fr => format!("Allocation mensuelle de {} par personne", m(amount)),
            Lang::En => format!("A monthly allocation of {} per person", m(amount)),
        },
        ProposalKind::Allocation(AllocationPolicy::PerHousehold {
            base,
            per_extra_member,
        }) => match l {
            Lang::Fr => format!(
                "Allocation de {} par foyer et {} par membre en plus",
                m(base),
                m(per_extra_member)
            ),
            Lang::En => format!(
                "An allocation of {} per household and {} per extra member",
                m(base),
                m(per_extra_member)
            ),
        },
        ProposalKind::ContributionScale(_) => l
            .t(
                "Change the contribution scale",
                "Changer le barème des cotisations",
            )
            .to_owned(),
        ProposalKind::Rollover(r) => match (l, r) {
            (_, Rollover::CarryOver) => l
                .t(
                    "Unspent allocation carries over",
                    "Le reste de l'allocation est reporté",
                )
                .to_owned(),
            (_, Rollover::Expire) => l
                .t(
                    "Unspent allocation expires",
                    "Le reste de l'allocation expire",
                )
                .to_owned(),
            (Lang::Fr, Rollover::Cap { max }) => format!("Report plafonné à {}", m(max)),
            (Lang::En, Rollover::Cap { max }) => format!("Carry over, capped at {}", m(max)),
        },
        ProposalKind::Accredit {
            scope,
            valid_from,
            valid_until,
            ..
        } => {
            let cats: Vec<String> = scope
                .iter()
                .map(|x| {
                    format!(
                        "{} {}\u{a0}%",
                        super::html::category_label(l, x.category.as_str()),
                        x.coverage_pct
                    )
                })
                .collect();
            let who = subject.cloned().unwrap_or_default();
            match l {
                Lang::Fr => format!(
                    "Conventionner {who} pour {} du {valid_from} au {valid_until}",
                    cats.join(", ")
                ),
                Lang::En => format!(
                    "Accredit {who} for {} from {valid_from} to {valid_until}",
                    cats.join(", ")
                ),
            }
        }
        ProposalKind::Revoke {
            accreditation,
            reason,
        } => match l {
            Lang::Fr => format!(
                "Révoquer le conventionnement {} : {reason}",
                accreditation.short()
            ),
            Lang::En => format!("Revoke accreditation {}: {reason}", accreditation.short()),
        },
        ProposalKind::RecognisePeer { caisse } => match l {
            Lang::Fr => format!(
                "Reconnaître les conventionnements de la caisse {}",
                caisse.short()
            ),
            Lang::En => format!("Recognise the accreditations of caisse {}", caisse.short()),
        },
        ProposalKind::RecognitionPolicy(p) => match p {
            RecognitionPolicy::None => l
                .t(
                    "Recognise no other caisse's accreditations",
                    "Ne reconnaître aucun conventionnement d'autres caisses",
                )
                .to_owned(),
            RecognitionPolicy::Listed => l
                .t(
                    "Recognise the caisses listed by vote",
                    "Reconnaître les caisses désignées par vote",
                )
                .to_owned(),
            RecognitionPolicy::CompatibleCriteria => l
                .t(
                    "Recognise every caisse whose criteria include ours",
                    "Reconnaître toute caisse dont les critères incluent les nôtres",
                )
                .to_owned(),
        },
    }
}

/// Why a vote ended as it did, in the visitor's words (the caisse records
/// its reason in English).
fn outcome_reason(l: Lang, o: &crate::parliament::Outcome) -> String {
    match l {
        Lang::En => o.reason.clone(),
        Lang::Fr => {
            let counts = format!(
                "{} pour, {} contre, {} abstention(s), sur {} sièges",
                o.yes, o.no, o.abstain, o.seats
            );
            let r = &o.reason;
            if o.passed {
                counts
            } else if r.starts_with("quorum not reached") {
                format!("quorum non atteint ({counts})")
            } else if r.starts_with("rejected") {
                format!("majorité non atteinte ({counts})")
            } else if let Some(why) = r.strip_prefix("passed the vote but could not take effect: ")
            {
                format!("adoptée par le vote mais sans effet possible : {why}")
            } else {
                format!("le parlement ne pouvait pas décider ({counts}) : {r}")
            }
        }
    }
}

/// A line diff of two texts: each line marked kept, added or removed.
pub fn line_diff<'a>(old: &'a str, new: &'a str) -> Vec<(char, &'a str)> {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    if a.len().saturating_mul(b.len()) > 4_000_000 {
        let mut out: Vec<(char, &str)> = a.iter().map(|x| ('-', *x)).collect();
        out.extend(b.iter().map(|x| ('+', *x)));
        return out;
    }
    // Longest common subsequence, then walk it.
    let (n, m) = (a.len(), b.len());
    let mut lcs = vec![vec![0u32; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::new();
    while i < n && j < m {
        if a[i] == b[j] {
            out.push((' ', a[i]));
            i += 1;
            j += 1;
        } else if lcs[i + 1][j] >= lcs[i][j + 1] {
            out.push(('-', a[i]));
            i += 1;
        } else {
            out.push(('+', b[j]));
            j += 1;
        }
    }
    out.extend(a[i..].iter().map(|x| ('-', *x)));
    out.extend(b[j..].iter().map(|x| ('+', *x)));
    out
}

fn pretty<T: serde::Serialize>(x: &T) -> String {
    serde_json::to_string_pretty(x).unwrap_or_default()
}

fn proposal_text(
    v: &Visitor,
    p: &Proposal,
    current: Option<&caisse_protocol::criteria::Criteria>,
) -> String {
    match (&p.kind, p.outcome.is_none()) {
        (ProposalKind::Criteria(new), true) => {
            let old = current.map(pretty).unwrap_or_default();
            let new = pretty(new);
            let lines: String = line_diff(&old, &new)
                .into_iter()
                .map(|(mark, text)| {
                    let (class, label) = match mark {
                        '+' => ("add", v.t("added", "ajouté")),
                        '-' => ("del", v.t("removed", "retiré")),
                        _ => ("same", ""),
                    };
                    let sr = if label.is_empty() {
                        String::new()
                    } else {
                        format!("<span class=\"sr-only\">{label}: </span>")
                    };
                    format!("<span class=\"{class}\">{sr}{mark} {}</span>", esc(text))
                })
                .collect();
            format!(
                "<p>{}</p><pre class=\"diff\" aria-label=\"{}\">{lines}</pre>",
                v.t(
                    "What this changes in the criteria in force (+ added, − removed):",
                    "Ce que cela change aux critères en vigueur (+ ajouté, − retiré) :"
                ),
                v.t("criteria changes", "changements des critères")
            )
        }
        (kind, _) => format!(
            "<details><summary>{}</summary><pre class=\"diff\">{}</pre></details>",
            v.t("Full text", "Texte complet"),
            esc(pretty(kind))
        ),
    }
}

fn render(v: &Visitor, d: &Data, who: &Who, my_seat: Option<u32>) -> String {
    let l = v.lang;
    let active: Vec<&Seat> = d
        .seats
        .iter()
        .map(|(x, _)| x)
        .filter(|x| x.removed.is_none())
        .collect();
    let count = |k: SeatKind| active.iter().filter(|x| x.kind == k).count();
    let citizens = count(SeatKind::Citizen);
    let rule = match &d.problem {
        None => format!(
            "<p class=\"notice\" role=\"status\">{} {citizens} / {} — {}</p>",
            v.t("Citizens' seats:", "Sièges citoyens :"),
            active.len(),
            v.t(
                "at least half of the seats are citizens': the parliament can vote.",
                "au moins la moitié des sièges sont citoyens : le parlement peut voter."
            )
        ),
        Some(p) => format!(
            "<p class=\"error\" role=\"alert\">{} {citizens} / {} — {}</p>",
            v.t("Citizens' seats:", "Sièges citoyens :"),
            active.len(),
            esc(p)
        ),
    };
    let seats: String = d
        .seats
        .iter()
        .map(|(x, name)| {
            let holder = match (x.kind, name) {
                (_, Some(n)) => esc(n),
                (SeatKind::Citizen, None) if Some(x.id) == my_seat => v.t("you", "vous").to_owned(),
                (SeatKind::Citizen, None) => v.t("a member", "un·e membre").to_owned(),
                _ => esc(&x.holder),
            };
            let state = match x.removed {
                Some(day) => format!("{} {day}", v.t("removed on", "retiré le")),
                None => format!("{} {}", v.t("since", "depuis le"), x.added),
            };
            format!(
                "<tr><td>seat-{}</td><td>{}</td><td>{holder}</td><td>{state}</td></tr>",
                x.id,
                kind_name(l, x.kind)
            )
        })
        .collect();
    let can_vote_any = *who == Who::Admin;
    let seat_options: String = active
        .iter()
        .map(|x| {
            format!(
                "<option value=\"{0}\">seat-{0} ({1})</option>",
                x.id,
                kind_name(l, x.kind)
            )
        })
        .collect();
    let mut proposals = String::new();
    for p in &d.proposals {
        let open = p.outcome.is_none();
        let (yes, no, abstain) = match &p.outcome {
            Some(o) => (o.yes, o.no, o.abstain),
            None => {
                let c = |ch: Choice| p.votes.values().filter(|x| **x == ch).count() as u32;
                (c(Choice::Yes), c(Choice::No), c(Choice::Abstain))
            }
        };
        let tally = format!(
            "<p class=\"tally\" id=\"tally-{id}\">{tl} <span data-choice=\"yes\">{yl} {yes}</span> · <span data-choice=\"no\">{nl} {no}</span> · <span data-choice=\"abstain\">{al} {abstain}</span> — {cast} {votes_of} {seats} {seats_l}</p>",
            id = p.id,
            tl = v.t("Tally:", "Décompte :"),
            yl = choice_name(l, Choice::Yes),
            nl = choice_name(l, Choice::No),
            al = choice_name(l, Choice::Abstain),
            cast = p.votes.len(),
            votes_of = v.t("votes cast of", "votes exprimés sur"),
            seats = active.len(),
            seats_l = v.t("seats", "sièges"),
        );
        let mine = my_seat
            .and_then(|s| p.votes.get(&s))
            .map(|c| {
                format!(
                    "<p>{} <strong>{}</strong></p>",
                    v.t("Your vote:", "Votre vote :"),
                    choice_name(l, *c)
                )
            })
            .unwrap_or_default();
        let status = match &p.outcome {
            Some(o) => format!(
                "<p class=\"{}\">{} — {}<br><span class=\"mono\">{} {}</span></p>",
                if o.passed { "notice" } else { "error" },
                if o.passed {
                    v.t("Adopted", "Adoptée")
                } else {
                    v.t("Rejected", "Rejetée")
                },
                esc(outcome_reason(l, o)),
                v.t("Signed decision", "Décision signée"),
                esc(o.decision.short())
            ),
            None if d.now >= p.closes => format!(
                "<p>{}</p>",
                v.t(
                    "Voting has ended; waiting to be closed.",
                    "Le vote est terminé ; en attente de clôture."
                )
            ),
            None => format!(
                "<p>{} {}</p>",
                v.t("Voting open until", "Vote ouvert jusqu'au"),
                Day::from_unix(p.closes)
            ),
        };
        let mut forms = String::new();
        let can_vote = open && d.now < p.closes && d.problem.is_none();
        if can_vote && (can_vote_any || my_seat.is_some()) {
            let seat_field = if can_vote_any {
                format!(
                    "<label for=\"seat-{id}\">{}</label><select id=\"seat-{id}\" name=\"seat\" required>{seat_options}</select>",
                    v.t("Seat", "Siège"),
                    id = p.id
                )
            } else {
                String::new()
            };
            let radios: String = [Choice::Yes, Choice::No, Choice::Abstain]
                .iter()
                .map(|c| {
                    let val = match c {
                        Choice::Yes => "yes",
                        Choice::No => "no",
                        Choice::Abstain => "abstain",
                    };
                    format!(
                        "<label><input type=\"radio\" name=\"choice\" value=\"{val}\" required> {}</label>",
                        choice_name(l, *c)
                    )
                })
                .collect();
            forms.push_str(&format!(
                r#"<form method="post" action="/parliament/vote" class="vote">{csrf}<input type="hidden" name="proposal" value="{id}">{seat_field}<fieldset><legend>{legend}</legend><div class="choices">{radios}</div></fieldset><button type="submit" aria-label="{vote}: {title}">{vote}</button></form>"#,
                csrf = csrf_field(&v.session),
                id = p.id,
                title = esc(&p.title),
                legend = v.t("Vote", "Vote"),
                vote = v.t("Record the vote", "Enregistrer le vote"),
            ));
        }
        if open && *who == Who::Admin {
            forms.push_str(&format!(
                r#"<form method="post" action="/parliament/close">{csrf}<input type="hidden" name="proposal" value="{id}"><button type="submit" class="secondary">{close}</button></form>"#,
                csrf = csrf_field(&v.session),
                id = p.id,
                close = v.t("Close and tally", "Clore et dépouiller"),
            ));
        }
        proposals.push_str(&format!(
            r#"<article class="proposal" id="p-{id}" aria-labelledby="h-{id}">
<h3 id="h-{id}">{title}</h3>
<p>{kind}</p>
<p class="mono">{id}</p>
{text}
{status}
{tally}
{mine}
{forms}
</article>"#,
            id = p.id,
            title = esc(&p.title),
            kind = esc(describe(l, &p.kind, d.subjects.get(&p.id))),
            text = proposal_text(v, p, d.criteria.as_ref()),
        ));
    }
    if proposals.is_empty() {
        proposals = format!(
            "<p>{}</p>",
            v.t("No proposal yet.", "Aucune proposition pour l'instant.")
        );
    }
    format!(
        r#"<h2>{comp_h}</h2>
<div class="figures">
<div class="figure"><div class="label">{cit_l}</div><div class="big">{cit}</div></div>
<div class="figure"><div class="label">{prod_l}</div><div class="big">{prod}</div></div>
<div class="figure"><div class="label">{work_l}</div><div class="big">{work}</div></div>
</div>
{rule}
<p>{rules_l} {quorum}% · {threshold_l} {threshold}%</p>
<div class="table-wrap"><table><caption class="sr-only">{seats_h}</caption><thead><tr><th scope="col">{seat_c}</th><th scope="col">{kind_c}</th><th scope="col">{holder_c}</th><th scope="col">{state_c}</th></tr></thead><tbody>{seats}</tbody></table></div>
<h2>{props_h}</h2>
{proposals}
{propose}"#,
        comp_h = v.t("Seats and composition", "Sièges et composition"),
        cit_l = v.t("Citizens", "Citoyen·nes"),
        cit = citizens,
        prod_l = v.t("Producers", "Producteur·rices"),
        prod = count(SeatKind::Producer),
        work_l = v.t("Food workers", "Travailleur·ses"),
        work = count(SeatKind::Worker),
        rules_l = v.t("Quorum:", "Quorum :"),
        quorum = d.rules.quorum_pct,
        threshold_l = v.t("majority needed: more than", "majorité requise : plus de"),
        threshold = d.rules.threshold_pct,
        seats_h = v.t("Seats", "Sièges"),
        seat_c = v.t("Seat", "Siège"),
        kind_c = v.t("Kind", "Type"),
        holder_c = v.t("Held by", "Occupé par"),
        state_c = v.t("Status", "État"),
        props_h = v.t("Proposals", "Propositions"),
        propose = d
            .choices
            .as_ref()
            .map(|c| super::propose::forms(v, c))
            .unwrap_or_default(),
    )
}

/// `POST /parliament/vote`
pub async fn vote(State(s): State<ConsoleState>, p: Posted) -> Response {
    let v = &p.visitor;
    let (who, my_seat) = match access(v, &s).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let seat = match who {
        Who::Admin => crate::app::parse_seat(p.get("seat")).ok(),
        Who::Member { .. } | Who::Seat { .. } => my_seat,
        _ => {
            return v.error(
                &s,
                StatusCode::FORBIDDEN,
                v.t(
                    "An observer cannot vote or change anything.",
                    "L'observation ne peut ni voter ni rien modifier.",
                ),
            );
        }
    };
    let (Some(seat), Ok(proposal), Ok(choice)) = (
        seat,
        p.get("proposal").parse::<ProposalId>(),
        p.get("choice").parse::<Choice>(),
    ) else {
        let flash = Flash {
            ok: false,
            text: v
                .t(
                    "Choose a seat and a vote, then send again.",
                    "Choisissez un siège et un vote, puis renvoyez.",
                )
                .to_owned(),
        };
        return v.redirect(&s, "/parliament", Some(flash));
    };
    let vote = Command::Vote {
        proposal,
        seat,
        choice,
    };
    let result = reply!(s.handle.execute(vote).await, Reply::Vote);
    let flash = match result {
        Ok(r) => {
            tracing::info!(target: "caisse::events::parliament", proposal = %proposal, seat, choice = ?choice, "vote recorded from the console");
            let text = match (v.lang, r.replaced) {
                (Lang::Fr, Some(old)) => format!(
                    "Vote de seat-{seat} enregistré : {} (remplace {}).",
                    choice_name(Lang::Fr, choice),
                    choice_name(Lang::Fr, old)
                ),
                (Lang::Fr, None) => format!(
                    "Vote de seat-{seat} enregistré : {}.",
                    choice_name(Lang::Fr, choice)
                ),
                (Lang::En, Some(old)) => format!(
                    "Vote of seat-{seat} recorded: {} (replaces {}).",
                    choice_name(Lang::En, choice),
                    choice_name(Lang::En, old)
                ),
                (Lang::En, None) => format!(
                    "Vote of seat-{seat} recorded: {}.",
                    choice_name(Lang::En, choice)
                ),
            };
            Flash { ok: true, text }
        }
        Err(e) => Flash::refused(v.lang, &e),
    };
    v.redirect(&s, &format!("/parliament#p-{proposal}"), Some(flash))
}

/// `POST /parliament/close`
pub async fn close(State(s): State<ConsoleState>, p: Posted) -> Response {
    let v = &p.visitor;
    if let Err(r) = v.require(&s, &[Kind::Admin]) {
        return r;
    }
    let Ok(proposal) = p.get("proposal").parse::<ProposalId>() else {
        return v.error(
            &s,
            StatusCode::BAD_REQUEST,
            v.t("No such proposal.", "Proposition inconnue."),
        );
    };
    let result = reply!(
        s.handle.execute(Command::CloseProposal { proposal }).await,
        Reply::Proposal
    );
    let flash = match result {
        Ok(p) => {
            let o = p.outcome.as_ref();
            let passed = o.is_some_and(|o| o.passed);
            Flash {
                ok: true,
                text: format!(
                    "{} — {}",
                    if passed {
                        v.t("Adopted", "Adoptée")
                    } else {
                        v.t("Rejected", "Rejetée")
                    },
                    o.map(|o| o.reason.clone()).unwrap_or_default()
                ),
            }
        }
        Err(e) => Flash::refused(v.lang, &e),
    };
    v.redirect(&s, &format!("/parliament#p-{proposal}"), Some(flash))
}

#[cfg(test)]
mod tests {
    use super::line_diff;
    use proptest::prelude::*;

    proptest! {
        /// Kept and removed lines give back the old text, kept and added
        /// lines the new one, and no diff is longer than both texts.
        #[test]
        fn a_diff_rebuilds_both_texts(
            old in proptest::collection::vec("[abc]{0,2}", 0..12),
            new in proptest::collection::vec("[abc]{0,2}", 0..12),
        ) {
            let (old, new) = (old.join("\n"), new.join("\n"));
            let d = line_diff(&old, &new);
            let side = |skip: char| d.iter().filter(|(m, _)| *m != skip).map(|(_, t)| *t).collect::<Vec<_>>();
            prop_assert_eq!(side('+'), old.lines().collect::<Vec<_>>());
            prop_assert_eq!(side('-'), new.lines().collect::<Vec<_>>());
            prop_assert!(d.len() <= old.lines().count() + new.lines().count());
        }
    }

    #[test]
    fn diff_marks_changed_lines_only() {
        let d = line_diff("a\nb\nc", "a\nB\nc\nd");
        assert_eq!(
            d,
            vec![(' ', "a"), ('-', "b"), ('+', "B"), (' ', "c"), ('+', "d")]
        );
        assert!(line_diff("x", "x").iter().all(|(m, _)| *m == ' '));
    }
}
