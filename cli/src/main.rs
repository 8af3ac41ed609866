//! The `caisse` command: create a caisse, run its node, and drive it.
//!
//! Thin over `caisse-node`: `init` and `node` call its daemon module; every
//! other command calls the running node's HTTP API through its client.

mod dossier;
mod keybackup;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow, bail};
use caisse_node::backup::BackupDone;
use caisse_node::caisse::{
    AllocationRun, ContributionRecorded, EnrollInput, Enrolled, OutletRegistered, PayoutDone,
    PurchaseInput, Receipt, SubsidyRecorded,
};
use caisse_node::client::{Client, ClientError, TokenFile};
use caisse_node::conventionnement::ProducerRecord;
use caisse_node::daemon::{self, InitOptions};
use caisse_node::dto;
use caisse_node::ledger::CheckReport;
use caisse_node::ledger::SubsidySource;
use caisse_node::members::MemberRecord;
use caisse_node::parliament::{
    Choice, Drawn, Proposal, ProposalKind, Seat, SeatKind, VoteRecorded,
};
use caisse_node::policy::Policy;
use caisse_node::policy::{AllocationPolicy, RecognitionPolicy, Rollover};
use caisse_node::producers::{ProducerPage, RegistryRow};
use caisse_node::report::Export;
use caisse_node::sepa::BankAccount;
use caisse_node::settlement::SettlementRun;
use caisse_node::writer::JobStatus;
use caisse_protocol::ids::HouseholdId;
use caisse_protocol::messages::{PurchaseLine, ScopeItem, Subject};
use caisse_protocol::{
    Amount, CaisseId, CardId, Category, Day, FederationId, MemberId, OutletId, Period, ProducerId,
    PurchaseId,
};
use clap::{Args, Parser, Subcommand};
use serde::Serialize;
use serde_json::{Value, json};

/// Run and drive the node of a food caisse (sécurité sociale de l'alimentation).
#[derive(Parser)]
#[command(name = "caisse", version, about, long_about = None)]
struct Cli {
    /// The caisse's data directory (holds config, key, store, node.json).
    #[arg(long, global = true, env = "CAISSE_DATA_DIR", default_value = ".")]
    data_dir: PathBuf,
    /// Talk to the node at this URL (http://HOST:PORT) instead of the one in DATA_DIR/node.json.
    #[arg(long, global = true)]
    url: Option<String>,
    /// Use the token in this file instead of DATA_DIR/admin.token (e.g. an outlet's).
    #[arg(long, global = true)]
    token_file: Option<PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a new caisse in --data-dir: key, config, store, tokens.
    Init(InitArgs),
    /// Run the caisse's node in the foreground (Ctrl-C or SIGTERM stops it cleanly).
    Node,
    /// Set the centre of the caisse's territory (LAT,LON in degrees; empty
    /// to clear): producers' distances are computed from it and their
    /// dossiers' communes.
    TerritoryCentre {
        /// `43.6109,3.8772`
        centre: String,
    },
    /// Show the running node's identity and counts.
    Status,
    /// Show the caisse's policy (allocation, rollover, contributions).
    Policy,
    /// Members: enrol, list, show, suspend, leave, PIN.
    #[command(subcommand)]
    Member(MemberCmd),
    /// Monthly allocations.
    #[command(subcommand)]
    Allocation(AllocationCmd),
    /// Member contributions.
    #[command(subcommand)]
    Contribution(ContributionCmd),
    /// Subsidies from the State, local authorities or others.
    #[command(subcommand)]
    Subsidy(SubsidyCmd),
    /// Outlets: register, list, pay out.
    #[command(subcommand)]
    Outlet(OutletCmd),
    /// Make a purchase at an outlet with a member's card.
    Purchase(PurchaseArgs),
    /// Check a data directory (file modes, config, key, store, peers,
    /// clock) and say what to fix; exits with status 1 if anything fails.
    Doctor,
    /// Write an online, consistent backup of the running node's store
    /// (members, ledger, tokens, federation documents; not caisse.key nor
    /// config.toml) while purchases go on.
    Backup {
        /// The file to write (must not exist; readable by you only).
        #[arg(long)]
        out: PathBuf,
        /// Also seal caisse.key and config.toml under a passphrase, in
        /// OUT.key beside the backup (run on the node's machine).
        #[arg(long)]
        with_key: bool,
        /// The passphrase's file (else CAISSE_BACKUP_PASSPHRASE).
        #[arg(long)]
        passphrase_file: Option<PathBuf>,
    },
    /// Restore a backup into the (new) data directory given by --data-dir;
    /// refuses to overwrite a store. Put caisse.key, config.toml and the
    /// token files back beside it, then start the node.
    Restore {
        /// The backup file.
        file: PathBuf,
        /// Also restore caisse.key and config.toml from FILE.key (made by
        /// `backup --with-key`), with the passphrase.
        #[arg(long)]
        with_key: bool,
        /// The passphrase's file (else CAISSE_BACKUP_PASSPHRASE).
        #[arg(long)]
        passphrase_file: Option<PathBuf>,
    },
    /// The store's engine, with the node stopped.
    #[command(subcommand)]
    Store(StoreCmd),
    /// Member cards: a page to print (name, number, QR code, barcode).
    #[command(subcommand)]
    Card(CardCmd),
    /// Bank accounts (the caisse's, the outlets') and the SEPA file of payouts.
    #[command(subcommand)]
    Bank(BankCmd),
    /// The ledger: balances, journal, audit.
    #[command(subcommand)]
    Ledger(LedgerCmd),
    /// The food parliament: seats, lottery, proposals, votes.
    #[command(subcommand)]
    Parliament(ParliamentCmd),
    /// Producers and their evaluation against the criteria.
    #[command(subcommand)]
    Producer(ProducerCmd),
    /// Accreditations (conventionnement) of producers and outlets.
    #[command(subcommand)]
    Accreditation(AccreditationCmd),
    /// The current criteria version.
    Criteria,
    /// Other caisses of the federation: recognised or not, connected, last change.
    Peers,
    /// Settlement between caisses: statements, net positions, transfers.
    #[command(subcommand)]
    Settlement(SettlementCmd),
    /// The network: addresses, connections, refused messages; block or unblock a caisse.
    #[command(subcommand)]
    Network(NetworkCmd),
    /// The evaluation report of a period, or an anonymised export for researchers.
    Report(ReportArgs),
    /// API tokens.
    #[command(subcommand)]
    Token(TokenCmd),
    /// Background jobs (allocation runs, ledger audits): progress.
    #[command(subcommand)]
    Job(JobCmd),
    /// Test networks only: join as a misbehaving peer and send forged,
    /// replayed, oversized and malformed messages at a caisse.
    Rogue {
        /// The target's libp2p address, with /p2p/<peer id> (from its node.json).
        #[arg(long)]
        target_addr: String,
        /// The target caisse id.
        #[arg(long)]
        target: String,
        /// The federation.
        #[arg(long, default_value = "caisse-federation")]
        federation: String,
        /// forged-heads, bad-signature, replay, oversized, malformed, forged-change (repeatable; default all), and lost-sync, throwaway, crowd, providers, large, flood (only when named).
        #[arg(long = "attack")]
        attacks: Vec<String>,
        /// Send the attacks this many times over, back to back.
        #[arg(long, default_value_t = 1)]
        repeat: usize,
        /// The rogue's key as 64 hex digits (default: a new one), so a
        /// second run is the same peer.
        #[arg(long)]
        seed: Option<String>,
        /// Announce this address as the rogue's own (repeatable): a third
        /// party's, to check the target does not dial it.
        #[arg(long = "claim-addr")]
        claim: Vec<String>,
    },
    /// The node's clock (test networks only).
    #[command(subcommand)]
    Clock(ClockCmd),
}

#[derive(Args)]
struct InitArgs {
    /// Public name of the caisse.
    #[arg(long)]
    name: String,
    /// Its territory.
    #[arg(long, default_value = "")]
    territory: String,
    /// The federation it joins.
    #[arg(long, default_value = "caisse-federation")]
    federation: String,
    /// libp2p listen address (repeatable).
    #[arg(long)]
    listen: Vec<String>,
    /// HTTP API address (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:7300")]
    api: SocketAddr,
    /// libp2p address of another caisse to connect to (repeatable).
    #[arg(long)]
    bootstrap: Vec<String>,
    /// Public libp2p address of this node, if others reach it through a
    /// NAT or a port forward (repeatable); signed in its document.
    #[arg(long)]
    announce: Vec<String>,
    /// Initial policy as a TOML file (default: EUR 100 per person, carry over,
    /// contributions EUR 1 to 150 linear in income from EUR 800 to 4000).
    #[arg(long)]
    policy: Option<PathBuf>,
    /// Allow the admin API to set the node's clock (test networks only).
    #[arg(long)]
    manual_clock: bool,
    /// Storage engine: redb (the default), or sled (earlier versions' engine,
    /// which loses acknowledged writes at a power cut; kept for comparison).
    #[arg(long, default_value = "redb", value_parser = ["redb", "sled"])]
    store_engine: String,
}

#[derive(Subcommand)]
enum StoreCmd {
    /// Copy the store into another engine, check every key, and keep the
    /// old store aside (store.old); the node must be stopped. `--to redb`
    /// on a redb store from an earlier version packs its journal.
    Convert {
        /// The engine to convert to: redb or sled.
        #[arg(long, value_parser = ["redb", "sled"])]
        to: String,
    },
    /// Which engine the store uses.
    Engine,
}

#[derive(Subcommand)]
enum MemberCmd {
    /// Enrol a resident (residency is the only condition; adults only).
    Enroll {
        /// Full name (stays on this node).
        #[arg(long)]
        name: String,
        /// Place of residence.
        #[arg(long)]
        residence: String,
        /// Year of birth.
        #[arg(long)]
        birth_year: Option<u16>,
        /// Monthly income in EUR, for the contribution scale.
        #[arg(long)]
        income: Option<Amount>,
        /// Join this household.
        #[arg(long, conflicts_with = "new_household")]
        household: Option<HouseholdId>,
        /// Start a new household.
        #[arg(long)]
        new_household: bool,
        /// Day of enrolment (default today), YYYY-MM-DD.
        #[arg(long)]
        joined: Option<Day>,
        /// PIN for paying without a smartphone (4 to 8 digits).
        #[arg(long)]
        pin: Option<String>,
    },
    /// List members.
    List {
        /// Start after this member id.
        #[arg(long)]
        from: Option<MemberId>,
        /// At most this many.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
    /// Show one member.
    Show {
        /// Member id.
        id: MemberId,
    },
    /// Suspend a member (no allocation, card refused).
    Suspend {
        /// Member id.
        id: MemberId,
    },
    /// Lift a suspension.
    Reinstate {
        /// Member id.
        id: MemberId,
    },
    /// Record that a member leaves the caisse.
    Leave {
        /// Member id.
        id: MemberId,
        /// Day of leaving (default today).
        #[arg(long)]
        on: Option<Day>,
    },
    /// Set or reset a member's PIN (also unlocks a locked card).
    Pin {
        /// Member id.
        id: MemberId,
        /// New PIN, 4 to 8 digits.
        #[arg(long)]
        pin: String,
    },
}

#[derive(Subcommand)]
enum AllocationCmd {
    /// Issue a period's allocation to every member who should have it (at most once each).
    Issue {
        /// The month, YYYY-MM.
        #[arg(long)]
        period: Period,
    },
}

#[derive(Subcommand)]
enum ContributionCmd {
    /// Record a member's contribution for a month (once per month).
    Record {
        /// Member id.
        #[arg(long)]
        member: MemberId,
        /// The month, YYYY-MM.
        #[arg(long)]
        period: Period,
        /// Amount in EUR (default: the member's amount on the caisse's scale).
        #[arg(long)]
        amount: Option<Amount>,
    },
}

#[derive(Subcommand)]
enum SubsidyCmd {
    /// Record a subsidy received.
    Record {
        /// state, local-authority or other.
        #[arg(long)]
        source: SubsidySource,
        /// Amount in EUR.
        #[arg(long)]
        amount: Amount,
        /// The month, YYYY-MM.
        #[arg(long)]
        period: Period,
        /// A key that makes a retry harmless (e.g. the bank reference).
        #[arg(long)]
        key: Option<String>,
    },
}

#[derive(Subcommand)]
enum OutletCmd {
    /// Register an outlet conventioned for some categories; prints its till token.
    Register {
        /// Outlet name.
        #[arg(long)]
        name: String,
        /// Categories it may sell under the allocation, comma-separated.
        #[arg(long, value_delimiter = ',')]
        categories: Vec<Category>,
    },
    /// List outlets, what the caisse owes each, and suspended tills.
    List,
    /// Suspend an outlet's tills (a lost tablet, a closed shop): its token
    /// makes no sale until reinstated.
    Suspend {
        /// Outlet id.
        outlet: OutletId,
        /// Why, shown to the till.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Reinstate an outlet's tills (after a suspension, or after the node
    /// suspended them for a burst of wrong PINs).
    Reinstate {
        /// Outlet id.
        outlet: OutletId,
    },
    /// Pay an outlet what the caisse owes it (once per period).
    Payout {
        /// Outlet id.
        #[arg(long)]
        outlet: OutletId,
        /// The month, YYYY-MM.
        #[arg(long)]
        period: Period,
    },
}

#[derive(Args)]
struct PurchaseArgs {
    /// The member's card id.
    #[arg(long)]
    card: CardId,
    /// The outlet selling.
    #[arg(long)]
    outlet: OutletId,
    /// Amount in EUR (one line; or use --line).
    #[arg(long, requires = "category")]
    amount: Option<Amount>,
    /// Category of that line.
    #[arg(long)]
    category: Option<Category>,
    /// Producer of that line.
    #[arg(long)]
    producer: Option<ProducerId>,
    /// A line as CATEGORY:EUR[:PRODUCER] (repeatable).
    #[arg(long = "line")]
    lines: Vec<String>,
    /// Purchase id (UUID); reuse it to retry safely. Default: a new one.
    #[arg(long)]
    id: Option<PurchaseId>,
    /// The member's PIN, typed on the outlet's device.
    #[arg(long)]
    pin: Option<String>,
}

#[derive(Subcommand)]
enum LedgerCmd {
    /// Every account's balance.
    Balances,
    /// Journal entries.
    Journal {
        /// First sequence number.
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Audit the ledger; exits with status 3 if anything is wrong. Reads
    /// the journal from where the last clean audit stopped, and compares
    /// every balance.
    Check {
        /// Read the whole journal again, from its first entry (an edit of
        /// entries an earlier audit verified is found only so).
        #[arg(long)]
        full: bool,
    },
    /// The accountant's file of a month: every entry as debits and credits
    /// on the associations' chart of accounts, in the FEC layout (`|`
    /// separated, decimal comma); members never itemised.
    Accounting {
        /// The month, YYYY-MM.
        #[arg(long)]
        period: Period,
        /// Where to write it (readable by you only).
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum JobCmd {
    /// Jobs running and recently finished, with their progress.
    List,
}

#[derive(Subcommand)]
enum ParliamentCmd {
    /// Seats: add or remove.
    #[command(subcommand)]
    Seat(SeatCmd),
    /// Draw citizen seats by lottery among volunteers, stratified by age band
    /// and income bracket, reproducible from the published seed.
    Draw {
        /// How many seats to draw.
        #[arg(long)]
        seats: usize,
        /// File of volunteers' member ids, one per line.
        #[arg(long)]
        from: PathBuf,
        /// The published seed.
        #[arg(long)]
        seed: u64,
    },
    /// Put a proposal to the parliament (give exactly one kind of change).
    Propose(Box<ProposeArgs>),
    /// Vote on a proposal: one seat, one vote (a new vote replaces the seat's
    /// previous one while voting is open).
    Vote {
        /// Proposal id.
        #[arg(long)]
        proposal: String,
        /// Seat (seat-3 or 3).
        #[arg(long)]
        seat: String,
        /// yes, no or abstain.
        #[arg(long)]
        choice: Choice,
    },
    /// Close a proposal and tally; a passed proposal takes effect at once.
    Close {
        /// Proposal id.
        #[arg(long)]
        proposal: String,
    },
    /// Seats, composition, proposals, tallies and decisions.
    Show,
}

#[derive(Subcommand)]
enum SeatCmd {
    /// Add a seat.
    Add {
        /// citizen, producer or worker.
        #[arg(long)]
        kind: SeatKind,
        /// The member holding it (required for citizen seats).
        #[arg(long)]
        member: Option<MemberId>,
        /// The person holding a producer or worker seat.
        #[arg(long)]
        holder: Option<String>,
    },
    /// Remove a seat.
    Remove {
        /// Seat (seat-3 or 3).
        #[arg(long)]
        seat: String,
    },
}

#[derive(Args)]
struct ProposeArgs {
    /// A short title.
    #[arg(long)]
    title: String,
    /// Voting window in minutes (default: the caisse's parameter).
    #[arg(long)]
    window_minutes: Option<u32>,
    /// New criteria version, from a TOML or JSON file.
    #[arg(long, group = "change")]
    criteria: Option<PathBuf>,
    /// New allocation per person, in EUR.
    #[arg(long, group = "change")]
    allocation: Option<Amount>,
    /// New household allocation as BASE:PER_EXTRA_MEMBER in EUR (e.g. 100:50).
    #[arg(long, group = "change")]
    household_allocation: Option<String>,
    /// New contribution scale, from a TOML file.
    #[arg(long, group = "change")]
    contribution_scale: Option<PathBuf>,
    /// New rollover policy: carry-over, expire or cap:EUR.
    #[arg(long, group = "change")]
    rollover: Option<String>,
    /// Accredit this producer (with --scope).
    #[arg(long, group = "change", requires = "scope")]
    accredit_producer: Option<String>,
    /// Accredit this outlet (with --scope).
    #[arg(long, group = "change", requires = "scope")]
    accredit_outlet: Option<OutletId>,
    /// Scope of an accreditation: CATEGORY[:COVERAGE%],… (e.g. fresh-produce:100,bread:66).
    #[arg(long)]
    scope: Option<String>,
    /// First valid day (default: today).
    #[arg(long)]
    valid_from: Option<Day>,
    /// Last valid day (default: a year after the first).
    #[arg(long)]
    valid_until: Option<Day>,
    /// Revoke this accreditation (with --reason).
    #[arg(long, group = "change", requires = "reason")]
    revoke: Option<String>,
    /// Why it is revoked.
    #[arg(long)]
    reason: Option<String>,
    /// Recognise this peer caisse's accreditations.
    #[arg(long, group = "change")]
    recognise: Option<String>,
    /// Recognition policy: none, listed or compatible-criteria.
    #[arg(long, group = "change")]
    recognition: Option<String>,
}

#[derive(Subcommand)]
enum ProducerCmd {
    /// Register a producer with its declared attributes (TOML or JSON file).
    Register {
        /// Producer name.
        #[arg(long)]
        name: String,
        /// Attributes file: labels, distance_km, practices, price_fairness_pct, origin, evidence.
        #[arg(long)]
        attributes: PathBuf,
    },
    /// List producers.
    List,
    /// Show a producer, with who accredited it and under which criteria.
    Show {
        /// Producer id.
        id: String,
    },
    /// Judge a producer against the current criteria, rule by rule (a
    /// producer known only from another caisse is judged on its dossier).
    Evaluate {
        /// Producer id.
        id: String,
        /// Judge its dossier against this other caisse's published criteria
        /// (and from its territory) instead of ours.
        #[arg(long)]
        against: Option<String>,
    },
    /// (Producer, offline) Make a producer key: the file holds the secret
    /// (mode 0600, never overwritten); keep it as you keep a bank card.
    Keygen {
        /// Where to write the key.
        #[arg(long)]
        out: PathBuf,
    },
    /// (Producer, offline) Sign a dossier (TOML) with your key: business
    /// data only; evidence files are hashed here and never sent.
    Sign {
        /// Your producer key.
        #[arg(long)]
        key: PathBuf,
        /// The dossier (TOML; see README, "A producer's side").
        #[arg(long)]
        dossier: PathBuf,
        /// Where to write the signed dossier (hex).
        #[arg(long)]
        out: PathBuf,
        /// The federation the dossier is for (as the caisses' config says).
        #[arg(long, default_value = "caisse-federation")]
        federation: String,
    },
    /// Publish a signed dossier into the federation through this caisse
    /// (with the admin token, or your producer token: --token-file).
    Publish {
        /// A dossier signed with `producer sign`.
        #[arg(long, conflicts_with_all = ["key", "dossier"])]
        signed: Option<PathBuf>,
        /// Or sign now with this key…
        #[arg(long, requires = "dossier")]
        key: Option<PathBuf>,
        /// …this dossier (TOML).
        #[arg(long, requires = "key")]
        dossier: Option<PathBuf>,
        /// The federation (when signing now).
        #[arg(long, default_value = "caisse-federation")]
        federation: String,
    },
    /// Give a producer registered before producers had keys an identity:
    /// a key this caisse holds until the producer claims it (`handover`), a
    /// first signed dossier, its accreditations issued again for the new id.
    Adopt {
        /// The old producer id.
        id: String,
        /// SIRET (or SIREN).
        #[arg(long)]
        siret: String,
        /// Commune of the farm.
        #[arg(long)]
        commune: String,
        /// Its postcode.
        #[arg(long)]
        postcode: String,
        /// The commune's centre, LAT,LON.
        #[arg(long)]
        location: String,
    },
    /// Hand the key this caisse holds for a producer over to it (once: the
    /// caisse deletes its copy). Written like `keygen` writes one.
    Handover {
        /// The producer id (the adopted identity).
        id: String,
        /// Where to write the key for the producer.
        #[arg(long)]
        out: PathBuf,
    },
    /// A producer's newest dossier known here.
    Dossier {
        /// Producer id.
        id: String,
    },
    /// A producer's page: accreditations in every caisse, what each
    /// caisse's criteria require, sales per caisse and month, warnings.
    /// Without an id: your own page (with your producer token).
    Page {
        /// Producer id (staff view).
        id: Option<String>,
    },
    /// Producers of the federation and who accredits them.
    Registry {
        /// Sells in this category.
        #[arg(long)]
        category: Option<String>,
        /// Holds this label today.
        #[arg(long)]
        label: Option<String>,
        /// At most this many km from this caisse's territory.
        #[arg(long)]
        max_km: Option<u32>,
        /// Accredited by this caisse (id).
        #[arg(long)]
        caisse: Option<String>,
    },
}

#[derive(Subcommand)]
enum AccreditationCmd {
    /// List accreditations and revocations.
    List {
        /// Every caisse's accreditations, as replicated from the federation.
        #[arg(long)]
        federation: bool,
    },
    /// Accreditations of this caisse ending soon, and why (a certificate).
    Lapsing {
        /// Within this many days.
        #[arg(long, default_value_t = 30)]
        days: u32,
    },
}

#[derive(Subcommand)]
enum SettlementCmd {
    /// Publish a signed statement for each caisse that owes us for the period,
    /// and acknowledge (or dispute) the statements addressed to us.
    Run {
        /// The month, YYYY-MM.
        #[arg(long)]
        period: Period,
    },
    /// Statements, disputes, net positions and transfers (the same at every node).
    Show {
        /// The month, YYYY-MM.
        #[arg(long)]
        period: Period,
    },
    /// Withdraw the claims a debtor disputed as unknown to it (written
    /// off); a revised statement is published and the netting follows.
    Withdraw {
        /// The month, YYYY-MM.
        #[arg(long)]
        period: Period,
        /// The debtor caisse's id.
        #[arg(long)]
        debtor: CaisseId,
    },
    /// Record a transfer we made outside the system (by its number in `settlement show`).
    Paid {
        /// The month, YYYY-MM.
        #[arg(long)]
        period: Period,
        /// The transfer's number.
        #[arg(long)]
        transfer: usize,
        /// The bank reference.
        #[arg(long)]
        reference: String,
    },
}

#[derive(Subcommand)]
enum NetworkCmd {
    /// Addresses, connected peers, refused messages.
    Show,
    /// Stop talking to a caisse (and its peer id).
    Block {
        /// The caisse id.
        #[arg(long)]
        caisse: CaisseId,
    },
    /// Talk to a blocked caisse again.
    Unblock {
        /// The caisse id.
        #[arg(long)]
        caisse: CaisseId,
    },
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
struct ReportArgs {
    #[command(subcommand)]
    export: Option<ReportCmd>,
    /// The month, YYYY-MM.
    #[arg(long)]
    period: Option<Period>,
    /// md or json.
    #[arg(long, default_value = "md")]
    format: String,
}

#[derive(Subcommand)]
enum ReportCmd {
    /// Write anonymised per-purchase and per-member rows (CSV) for researchers.
    Export {
        /// The month, YYYY-MM.
        #[arg(long)]
        period: Period,
        /// Required: confirms names, addresses and ids are replaced by pseudonyms.
        #[arg(long, required = true)]
        anonymised: bool,
        /// Directory to write purchases.csv and members.csv into.
        #[arg(long, default_value = ".")]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum TokenCmd {
    /// Create a token: observer (the evaluation committee: aggregates and
    /// the anonymised export), auditor (the accountant: the ledger under
    /// pseudonyms), admin, or seat (a seat holder without a member card
    /// votes with it in the web console).
    Create {
        /// observer, auditor, admin or seat.
        #[arg(long)]
        role: String,
        /// The seat, for --role seat (seat-3 or 3).
        #[arg(long)]
        seat: Option<String>,
        /// The producer, for --role producer (its page and its own dossier only).
        #[arg(long)]
        producer: Option<String>,
    },
    /// List tokens by id (the start of their hash: the tokens themselves
    /// are not kept) and role.
    List,
    /// Revoke a token: requests with it are refused at once, and console
    /// sessions opened with it end.
    Revoke {
        /// The token's id as `token list` shows it (8 hex digits or more).
        id: String,
    },
}

#[derive(Subcommand)]
enum BankCmd {
    /// Set the bank account of the caisse, or of an outlet (--outlet).
    Set {
        /// The outlet (default: the caisse itself).
        #[arg(long)]
        outlet: Option<OutletId>,
        /// The account holder's name, as the bank knows it.
        #[arg(long)]
        holder: String,
        /// The IBAN (spaces allowed; its check digits are verified).
        #[arg(long)]
        iban: String,
        /// The BIC.
        #[arg(long)]
        bic: Option<String>,
        /// The caisse's SEPA creditor identifier (ICS, from its bank), to
        /// collect contributions by direct debit.
        #[arg(long)]
        creditor_id: Option<String>,
    },
    /// Record a member's SEPA direct debit mandate (the signed form's
    /// reference and date, the account to debit). Kept at home only.
    Mandate {
        /// The member.
        #[arg(long)]
        member: MemberId,
        /// The unique mandate reference (UMR) on the signed form.
        #[arg(long)]
        reference: String,
        /// The day the mandate was signed, YYYY-MM-DD.
        #[arg(long)]
        signed_on: Day,
        /// The account holder.
        #[arg(long)]
        holder: String,
        /// The IBAN to debit.
        #[arg(long)]
        iban: String,
        /// Its BIC.
        #[arg(long)]
        bic: Option<String>,
    },
    /// Write the SEPA direct debit file (pain.008.001.02) collecting a
    /// month's recorded contributions from members with a mandate.
    Contributions {
        /// The month, YYYY-MM.
        #[arg(long)]
        period: Period,
        /// Requested collection date, YYYY-MM-DD (default: in two days).
        #[arg(long)]
        on: Option<Day>,
        /// The XML file to write (readable by you only).
        #[arg(long)]
        out: PathBuf,
    },
    /// Write the SEPA credit transfer file (pain.001.001.09) of a month's
    /// outlet payouts, to import into the caisse's online banking.
    Payouts {
        /// The month, YYYY-MM.
        #[arg(long)]
        period: Period,
        /// Requested execution date, YYYY-MM-DD (default: tomorrow).
        #[arg(long)]
        on: Option<Day>,
        /// The XML file to write (readable by you only).
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum CardCmd {
    /// Write a page of member cards to print (A4, credit-card size): the
    /// caisse's name and contact, the member's name, the card number, a QR
    /// code and a barcode of it, as a till's scanner reads it.
    Print {
        /// Members, comma-separated (or --all).
        #[arg(long, value_delimiter = ',', required_unless_present = "all")]
        members: Vec<MemberId>,
        /// Every active member (the first 1,000).
        #[arg(long)]
        all: bool,
        /// How to reach the caisse (default: its territory).
        #[arg(long)]
        contact: Option<String>,
        /// The HTML file to write (readable by you only: it holds names).
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum ClockCmd {
    /// Set the node's date (needs [testing] manual_clock = true).
    Set {
        /// YYYY-MM-DD.
        #[arg(long)]
        today: Day,
    },
}

fn main() -> ExitCode {
    // Like every Unix tool: `caisse … | head` ends quietly when `head` has
    // read enough (Rust ignores SIGPIPE, so a write would panic instead).
    // SAFETY: restoring the default action of one signal before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn init_logging() {
    daemon::init_logging("info");
}

fn random_id() -> [u8; 16] {
    let r = daemon::random32();
    let mut b = [0u8; 16];
    b.copy_from_slice(&r[..16]);
    b
}

fn client(cli: &Cli) -> Result<Client> {
    let token = |file: &Path| -> Result<String> {
        std::fs::read_to_string(file)
            .with_context(|| format!("cannot read token file {}", file.display()))
    };
    match (&cli.url, &cli.token_file) {
        (Some(api), Some(file)) => Ok(Client::with_base(api.clone(), token(file)?)),
        (Some(api), None) => Ok(Client::with_base(
            api.clone(),
            token(&cli.data_dir.join("admin.token"))?,
        )),
        (None, Some(file)) => {
            let c = Client::from_data_dir(&cli.data_dir, TokenFile::Admin)
                .or_else(|_| Client::from_data_dir(&cli.data_dir, TokenFile::Observer))?;
            Ok(c.with_token(token(file)?))
        }
        (None, None) => Ok(Client::from_data_dir(&cli.data_dir, TokenFile::Admin)?),
    }
}

async fn run(cli: Cli) -> Result<ExitCode> {
    match &cli.command {
        Command::Init(args) => return init(&cli, args),
        Command::Producer(ProducerCmd::Keygen { out }) => {
            let (id, public) = dossier::keygen(out)?;
            if cli.json {
                println!(
                    "{}",
                    json!({ "producer": id, "public_key": public, "key_file": out })
                );
            } else {
                println!(
                    "Producer key written to {} (keep it safe: whoever holds it speaks for your farm).",
                    out.display()
                );
                println!("  producer id  {id}");
                println!("  public key   {public}");
                println!(
                    "Give the producer id to your caisse; sign your dossier with `caisse producer sign --key {}`.",
                    out.display()
                );
            }
            return Ok(ExitCode::SUCCESS);
        }
        Command::Producer(ProducerCmd::Sign {
            key,
            dossier: file,
            out,
            federation,
        }) => {
            let fed = FederationId::new(federation).map_err(|e| anyhow!("--federation: {e}"))?;
            let (d, bytes) = dossier::sign(&dossier::read_key(key)?, file, &fed)?;
            std::fs::write(out, hex::encode(&bytes))
                .with_context(|| format!("cannot write {}", out.display()))?;
            if cli.json {
                println!(
                    "{}",
                    json!({ "producer": d.id(), "version": d.version, "out": out })
                );
            } else {
                println!(
                    "Dossier version {} of {} ({}) signed: {}",
                    d.version,
                    d.name,
                    d.id(),
                    out.display()
                );
            }
            return Ok(ExitCode::SUCCESS);
        }
        Command::Node => return node(&cli.data_dir).await,
        Command::Restore {
            file,
            with_key,
            passphrase_file,
        } => {
            // The key bundle is opened (and the target checked) before
            // anything is written: a wrong passphrase changes nothing.
            let keys = if *with_key {
                let pass = keybackup::passphrase(passphrase_file.as_deref())?;
                let u = keybackup::unseal(&keybackup::bundle_path(file), &pass)?;
                for f in ["caisse.key", "config.toml"] {
                    if cli.data_dir.join(f).exists() {
                        bail!(
                            "{} exists: restoring the key never overwrites one",
                            cli.data_dir.join(f).display()
                        );
                    }
                }
                Some(u)
            } else {
                None
            };
            let done = caisse_node::backup::restore(file, &cli.data_dir)
                .map_err(|e| anyhow!("restore: {e}"))?;
            if let Some(u) = &keys {
                let restored = keybackup::write(u, &cli.data_dir)?;
                if !cli.json {
                    println!(
                        "Restored {} from the sealed key bundle.",
                        restored.join(" and ")
                    );
                }
            }
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&done)?);
            } else {
                println!(
                    "Restored {} records ({} journal entries) into {}/store.redb.",
                    done.records,
                    done.entries,
                    cli.data_dir.display()
                );
                println!(
                    "Put caisse.key, config.toml and the token files back in {}, start the node, and run `caisse ledger check --full` (the whole journal).",
                    cli.data_dir.display()
                );
            }
            return Ok(ExitCode::SUCCESS);
        }
        Command::Store(cmd) => {
            use caisse_node::store::Engine;
            match cmd {
                StoreCmd::Engine => {
                    let engine = Engine::of(&cli.data_dir)
                        .ok_or_else(|| anyhow!("{} holds no store", cli.data_dir.display()))?;
                    if cli.json {
                        println!(
                            "{}",
                            json!({ "engine": engine.name(), "path": engine.path(&cli.data_dir) })
                        );
                    } else {
                        println!(
                            "{} ({})",
                            engine.name(),
                            engine.path(&cli.data_dir).display()
                        );
                    }
                }
                StoreCmd::Convert { to } => {
                    let to = Engine::parse(to).ok_or_else(|| anyhow!("--to: use redb or sled"))?;
                    if let Some(info) = caisse_node::doctor::running(&cli.data_dir) {
                        anyhow::bail!(
                            "the node is running (pid {}): stop it first (nothing was changed)",
                            info.pid
                        );
                    }
                    let keys = caisse_node::store::convert(&cli.data_dir, to)
                        .map_err(|e| anyhow!("store convert: {e}"))?;
                    if cli.json {
                        println!("{}", json!({ "engine": to.name(), "keys": keys }));
                    } else {
                        println!(
                            "Converted {keys} keys to {} ({}); each was checked. The old store is kept beside it with the extension .old: remove it once the node runs well.",
                            to.name(),
                            to.path(&cli.data_dir).display()
                        );
                    }
                }
            }
            return Ok(ExitCode::SUCCESS);
        }
        Command::Doctor => {
            let checks = caisse_node::doctor::diagnose(&cli.data_dir).await;
            let failed = checks
                .iter()
                .any(|c| c.status == caisse_node::doctor::Status::Fail);
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&checks)?);
            } else {
                for c in &checks {
                    let mark = match c.status {
                        caisse_node::doctor::Status::Ok => "ok  ",
                        caisse_node::doctor::Status::Warn => "warn",
                        caisse_node::doctor::Status::Fail => "FAIL",
                    };
                    println!(
                        "{mark}  {:<12} {}",
                        c.what,
                        caisse_protocol::text::printable(&c.detail)
                    );
                }
            }
            return Ok(if failed {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            });
        }
        Command::Rogue {
            target_addr,
            target,
            federation,
            attacks,
            repeat,
            seed,
            claim,
        } => {
            let target: caisse_protocol::CaisseId =
                target.parse().map_err(|e| anyhow!("--target: {e}"))?;
            let federation =
                FederationId::new(federation).map_err(|e| anyhow!("--federation: {e}"))?;
            let attacks: Vec<caisse_node::rogue::Attack> = if attacks.is_empty() {
                caisse_node::rogue::Attack::ALL.to_vec()
            } else {
                attacks
                    .iter()
                    .map(|a| a.parse().map_err(|e: String| anyhow!(e)))
                    .collect::<Result<_>>()?
            };
            let seed = match seed {
                None => daemon::random32(),
                Some(h) => {
                    let mut b = [0u8; 32];
                    let v: Vec<u8> = (0..h.len() / 2)
                        .filter_map(|i| u8::from_str_radix(h.get(2 * i..2 * i + 2)?, 16).ok())
                        .collect();
                    if v.len() != 32 {
                        return Err(anyhow!("--seed: give 64 hex digits"));
                    }
                    b.copy_from_slice(&v);
                    b
                }
            };
            let reports = caisse_node::rogue::run(
                target_addr,
                target,
                federation,
                &attacks,
                seed,
                *repeat,
                claim,
            )
            .await
            .map_err(|e| anyhow!("rogue: {e}"))?;
            println!("{}", serde_json::to_string_pretty(&reports)?);
            return Ok(ExitCode::SUCCESS);
        }
        _ => {}
    }
    let c = client(&cli)?;
    let out = Output { json: cli.json };
    match call(&cli, &c, &out).await {
        Ok(code) => Ok(code),
        Err(e) => match e.downcast::<ClientError>() {
            Ok(ClientError::Api {
                code,
                message,
                detail,
                ..
            }) => {
                if cli.json {
                    println!(
                        "{}",
                        json!({ "error": code, "message": message, "detail": detail })
                    );
                } else {
                    eprintln!("refused ({code}): {message}");
                }
                Ok(ExitCode::from(2))
            }
            Ok(other) => Err(other.into()),
            Err(e) => Err(e),
        },
    }
}

fn init(cli: &Cli, a: &InitArgs) -> Result<ExitCode> {
    let policy = match &a.policy {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read policy file {}", p.display()))?;
            toml::from_str::<Policy>(&text)
                .map_err(|e| anyhow!("{} is not a valid policy: {e}", p.display()))?
        }
        None => Policy::default(),
    };
    let federation = FederationId::new(&a.federation).map_err(|e| anyhow!("--federation: {e}"))?;
    let created = daemon::init(
        &cli.data_dir,
        InitOptions {
            name: a.name.clone(),
            territory: a.territory.clone(),
            federation,
            api: a.api,
            listen: a.listen.clone(),
            bootstrap: a.bootstrap.clone(),
            announce: a.announce.clone(),
            policy,
            secret: None,
            testing: caisse_node::config::Testing {
                manual_clock: a.manual_clock,
                faults: None,
            },
            engine: caisse_node::store::Engine::parse(&a.store_engine)
                .ok_or_else(|| anyhow!("--store-engine: use redb or sled"))?,
        },
    )?;
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&created)?);
    } else {
        println!("Created caisse {}", created.caisse_id);
        println!("  data directory: {}", created.data_dir.display());
        println!("  admin token:    {}", created.admin_token_file.display());
        println!(
            "  observer token: {}",
            created.observer_token_file.display()
        );
        println!(
            "Start it with: caisse node --data-dir {}",
            created.data_dir.display()
        );
        if a.api.port() == 0 {
            println!("Then open the web console at the `api` address the node writes to node.json");
        } else {
            println!("Then open the web console at http://{}/", a.api);
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn node(dir: &Path) -> Result<ExitCode> {
    init_logging();
    match daemon::run_until_stopped(dir).await? {
        None => Ok(ExitCode::SUCCESS),
        Some(reason) => {
            eprintln!(
                "error: the caisse's storage failed and the node stopped: {reason}\n\
                 Nothing acknowledged was lost. Check the disk (space, permissions, errors in the system log), \
                 then start the node again; run `caisse ledger check` once it is up."
            );
            Ok(ExitCode::from(2))
        }
    }
}

struct Output {
    json: bool,
}

impl Output {
    /// Print an answer: as JSON with `--json`, else as `human` writes it.
    fn show<T: Serialize>(&self, v: &T, human: impl FnOnce(&T)) {
        if self.json {
            println!("{}", pretty(v));
        } else {
            human(v);
        }
    }

    /// [`Self::show`] for the one answer still read as JSON: the journal,
    /// whose ids are pseudonyms for an auditor.
    fn value(&self, v: &Value, human: impl FnOnce(&Value)) {
        self.show(v, human)
    }
}

/// Any answer as indented JSON.
fn pretty<T: Serialize>(v: &T) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

/// A typed field as the terminal shows it: as its JSON form would print
/// ([`s`]), so `--json` and the table agree on every value.
fn j<T: Serialize>(v: &T) -> String {
    s(&serde_json::to_value(v).unwrap_or_default())
}

/// One `name  value` line of a record.
fn field(name: &str, value: String) {
    println!("{name:<18} {value}");
}

/// A JSON value as text for the terminal: strings without quotes, and
/// never a control character (names may come from other caisses).
fn s(v: &Value) -> String {
    match v {
        Value::String(s) => caisse_protocol::text::printable(s),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn table(headers: &[&str], rows: Vec<Vec<String>>) {
    let rows: Vec<Vec<String>> = rows
        .into_iter()
        .map(|r| {
            r.iter()
                .map(|c| caisse_protocol::text::printable(c))
                .collect()
        })
        .collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let parts: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_uppercase()).collect());
    for r in rows {
        line(r);
    }
}

fn parse_line(text: &str) -> Result<PurchaseLine> {
    let mut parts = text.split(':');
    let (Some(cat), Some(amount)) = (parts.next(), parts.next()) else {
        bail!(
            "--line {text:?}: write CATEGORY:EUR or CATEGORY:EUR:PRODUCER, e.g. fresh-produce:12.50"
        );
    };
    let producer = parts
        .next()
        .map(|p| p.parse::<ProducerId>())
        .transpose()
        .map_err(|e| anyhow!("--line {text:?}: {e}"))?;
    Ok(PurchaseLine {
        category: cat.parse().map_err(|e| anyhow!("--line {text:?}: {e}"))?,
        producer,
        amount: amount
            .parse()
            .map_err(|e| anyhow!("--line {text:?}: {e}"))?,
    })
}

async fn call(cli: &Cli, c: &Client, out: &Output) -> Result<ExitCode> {
    match &cli.command {
        Command::Init(_)
        | Command::Node
        | Command::Doctor
        | Command::Restore { .. }
        | Command::Store(_)
        | Command::Rogue { .. } => unreachable_command(),
        Command::Status => {
            let v: dto::Status = c.get("/api/v1/status").await?;
            out.show(&v, |v| {
                field("caisse_id", j(&v.caisse_id));
                field("name", j(&v.name));
                field("territory", j(&v.territory));
                field("federation", j(&v.federation));
                field("members", j(&v.members));
                field("journal_entries", j(&v.journal_entries));
                field("jobs_running", j(&v.jobs_running));
                field("writer_queue", j(&v.writer_queue));
                field("today", j(&v.today));
            });
        }
        Command::Job(JobCmd::List) => {
            let v: Vec<JobStatus> = c.get("/api/v1/jobs").await?;
            out.show(&v, |v| {
                let rows: Vec<Vec<String>> = v
                    .iter()
                    .map(|job| {
                        let state = match (&job.error, job.finished) {
                            (Some(e), _) => format!("failed: {}", j(e)),
                            (None, true) => "done".into(),
                            (None, false) => "running".into(),
                        };
                        vec![
                            j(&job.id),
                            j(&job.what),
                            format!("{}/{}", job.done, job.total),
                            state,
                        ]
                    })
                    .collect();
                if rows.is_empty() {
                    println!("No background job since the node started.");
                } else {
                    table(&["job", "what", "progress", "state"], rows);
                }
            });
        }
        Command::Policy => {
            let p: Policy = c.get("/api/v1/policy").await?;
            if cli.json {
                out.show(&p, |_| {});
            } else {
                print!("{}", toml::to_string_pretty(&p)?);
            }
        }
        Command::Member(m) => return member(c, out, m).await,
        Command::Allocation(AllocationCmd::Issue { period }) => {
            let v: AllocationRun = c
                .post("/api/v1/allocations", &dto::PeriodBody { period: *period })
                .await?;
            out.show(&v, |v| {
                println!(
                    "Allocation {}: issued {} (total {} EUR), already issued {}, suspended {}, not members then {}, expired by rollover {} EUR",
                    j(&v.period),
                    v.issued,
                    v.total,
                    v.already_issued,
                    v.skipped_suspended,
                    v.skipped_not_member,
                    v.expired
                );
                if v.issued == 0 && v.already_issued != 0 {
                    println!("Nothing new: this period's allocation had already been issued to every eligible member.");
                }
            });
        }
        Command::Contribution(ContributionCmd::Record {
            member,
            period,
            amount,
        }) => {
            let v: ContributionRecorded = c
                .post(
                    "/api/v1/contributions",
                    &dto::ContributionBody {
                        member: *member,
                        period: *period,
                        amount: *amount,
                    },
                )
                .await?;
            out.show(&v, |v| {
                if v.already_recorded {
                    println!(
                        "Already recorded: {} EUR for {} (nothing changed)",
                        v.amount, v.period
                    );
                } else {
                    println!(
                        "Recorded contribution of {} EUR for {} (scale bracket {})",
                        v.amount, v.period, v.bracket
                    );
                }
            });
        }
        Command::Subsidy(SubsidyCmd::Record {
            source,
            amount,
            period,
            key,
        }) => {
            let key = key
                .clone()
                .unwrap_or_else(|| format!("subsidy-{}", PurchaseId::from_bytes(random_id())));
            let v: SubsidyRecorded = c
                .post(
                    "/api/v1/subsidies",
                    &dto::SubsidyBody {
                        source: *source,
                        amount: *amount,
                        period: *period,
                        key,
                    },
                )
                .await?;
            out.show(&v, |v| {
                let what = if v.already_recorded {
                    "Already recorded"
                } else {
                    "Recorded"
                };
                println!(
                    "{what}: subsidy of {} EUR from {} for {} (key {}; reuse it with --key to retry safely)",
                    v.amount,
                    j(&v.source),
                    v.period,
                    j(&v.key)
                );
            });
        }
        Command::Outlet(o) => return outlet(c, out, o).await,
        Command::Purchase(p) => {
            let mut lines: Vec<PurchaseLine> = Vec::new();
            if let (Some(amount), Some(category)) = (p.amount, &p.category) {
                lines.push(PurchaseLine {
                    category: category.clone(),
                    producer: p.producer,
                    amount,
                });
            }
            for l in &p.lines {
                lines.push(parse_line(l)?);
            }
            if lines.is_empty() {
                bail!(
                    "give the purchase as --amount EUR --category C, or one or more --line CATEGORY:EUR"
                );
            }
            let id = p.id.unwrap_or_else(daemon::new_purchase_id);
            let v: Receipt = c
                .post(
                    "/api/v1/purchases",
                    &PurchaseInput {
                        id,
                        card: p.card,
                        outlet: p.outlet,
                        lines,
                        pin: p.pin.clone(),
                    },
                )
                .await?;
            out.show(&v, |v| {
                let again = if v.replayed {
                    " (already accepted earlier: nothing charged again)"
                } else {
                    ""
                };
                println!("Purchase {} accepted{again}", v.purchase);
                println!("  total             {} EUR", v.total);
                println!("  paid by allocation {} EUR", v.allocation_part);
                println!("  left to pay       {} EUR", v.member_part);
                println!("  balance now       {} EUR", v.balance_after);
            });
        }
        Command::Ledger(l) => return ledger(c, out, l).await,
        Command::Parliament(p) => return parliament(c, out, p).await,
        Command::Producer(p) => return producer(c, out, p).await,
        Command::Accreditation(AccreditationCmd::Lapsing { days }) => {
            let v: Vec<dto::Lapsing> = c
                .get(&format!("/api/v1/accreditations/lapsing?days={days}"))
                .await?;
            out.show(&v, |v| {
                let rows = v
                    .iter()
                    .map(|r| {
                        vec![
                            j(&r.name),
                            j(&r.valid_until),
                            j(&r.days_left),
                            r.lapses_with.clone().unwrap_or_default(),
                        ]
                    })
                    .collect();
                table(&["name", "valid until", "days left", "ends with"], rows);
            });
        }
        Command::TerritoryCentre { centre } => {
            let v: dto::TerritoryCentre = c
                .post(
                    "/api/v1/territory-centre",
                    &dto::CentreBody {
                        centre: centre.clone(),
                    },
                )
                .await?;
            out.show(&v, |v| match v.territory_centre {
                Some(_) => {
                    println!("Territory centre set: producers' distances are computed from it.")
                }
                None => println!("Territory centre cleared: distances are unknown."),
            });
        }
        Command::Accreditation(AccreditationCmd::List { federation }) => {
            let v: Vec<dto::AccreditationView> = c
                .get(&format!("/api/v1/accreditations?federation={federation}"))
                .await?;
            out.show(&v, |v| {
                let rows = v.iter().map(accreditation_row).collect();
                table(
                    &["id", "by caisse", "subject", "scope", "valid", "status"],
                    rows,
                );
            });
        }
        Command::Peers => {
            let v: Vec<dto::PeerRow> = c.get("/api/v1/peers").await?;
            out.show(&v, |v| {
                let yes = |b: bool| if b { "yes" } else { "no" }.to_owned();
                let rows = v
                    .iter()
                    .map(|p| {
                        vec![
                            j(&p.caisse).chars().take(16).collect(),
                            j(&p.name),
                            yes(p.recognised),
                            yes(p.connected),
                            j(&p.last_changed),
                            j(&p.accreditations),
                        ]
                    })
                    .collect();
                table(
                    &[
                        "caisse",
                        "name",
                        "recognised",
                        "connected",
                        "last change (unix)",
                        "accreditations",
                    ],
                    rows,
                );
            });
        }
        Command::Settlement(SettlementCmd::Run { period }) => {
            let v: SettlementRun = c
                .post(
                    "/api/v1/settlement/run",
                    &dto::PeriodBody { period: *period },
                )
                .await?;
            out.show(&v, |v| {
                println!(
                    "Published {} statements as creditor; answered {} as debtor.",
                    v.statements_published, v.answered
                )
            });
        }
        Command::Settlement(SettlementCmd::Show { period }) => {
            let v: dto::SettlementShow = c
                .get(&format!("/api/v1/settlement?period={period}"))
                .await?;
            out.show(&v, |v| {
                let short = |x: &CaisseId| j(x).chars().take(8).collect::<String>();
                let rows = v
                    .statements
                    .iter()
                    .map(|st| {
                        let status = if st.acknowledged {
                            "countersigned"
                        } else if st.dispute.is_none() {
                            "waiting"
                        } else {
                            "DISPUTED"
                        };
                        vec![
                            short(&st.creditor),
                            short(&st.debtor),
                            j(&st.amount),
                            j(&st.count),
                            status.into(),
                        ]
                    })
                    .collect();
                table(&["creditor", "debtor", "amount", "receipts", "status"], rows);
                for st in &v.statements {
                    if let Some(d) = &st.dispute {
                        println!(
                            "dispute by {}: unknown to the debtor {}, missing from the statement {}",
                            short(&st.debtor),
                            serde_json::to_string(&d.unknown_to_debtor).unwrap_or_default(),
                            serde_json::to_string(&d.missing_from_statement).unwrap_or_default()
                        );
                    }
                }
                println!();
                let rows = v
                    .positions
                    .iter()
                    .map(|p| vec![short(&p.caisse), j(&p.net)])
                    .collect();
                table(&["caisse", "net position"], rows);
                println!("(net positions sum to {})\n", v.net_sum);
                let rows = v
                    .transfers
                    .iter()
                    .map(|t| {
                        let status = if t.confirmed_by_receiver {
                            "paid, confirmed"
                        } else if t.paid {
                            "paid, awaiting confirmation"
                        } else {
                            "to pay"
                        };
                        vec![
                            j(&t.transfer),
                            short(&t.from),
                            short(&t.to),
                            j(&t.amount),
                            status.into(),
                        ]
                    })
                    .collect();
                table(&["transfer", "from", "to", "amount", "status"], rows);
            });
        }
        Command::Settlement(SettlementCmd::Withdraw { period, debtor }) => {
            let v: dto::Withdrawn = c
                .post(
                    "/api/v1/settlement/withdraw",
                    &dto::WithdrawBody {
                        period: *period,
                        debtor: *debtor,
                    },
                )
                .await?;
            out.show(&v, |v| {
                println!(
                    "Withdrew {} disputed claims of {period}: a revised statement is published; the netting follows once the debtor acknowledges it.",
                    v.withdrawn
                );
            });
        }
        Command::Settlement(SettlementCmd::Paid {
            period,
            transfer,
            reference,
        }) => {
            let v: dto::TransferRecorded = c
                .post(
                    "/api/v1/settlement/paid",
                    &dto::PaidBody {
                        period: *period,
                        transfer: *transfer,
                        reference: reference.clone(),
                    },
                )
                .await?;
            out.show(&v, |v| {
                println!(
                    "Recorded transfer {} of {} EUR, signed and published for the receiver.",
                    v.transfer, v.amount
                )
            });
        }
        Command::Network(n) => match n {
            NetworkCmd::Show => {
                let v: dto::NetworkInfo = c.get("/api/v1/network").await?;
                out.show(&v, |v| println!("{}", pretty(v)));
            }
            NetworkCmd::Block { caisse } | NetworkCmd::Unblock { caisse } => {
                let block = matches!(n, NetworkCmd::Block { .. });
                let v: dto::Blocked = c
                    .post(
                        "/api/v1/network/block",
                        &dto::BlockBody {
                            caisse: *caisse,
                            block,
                        },
                    )
                    .await?;
                out.show(&v, |v| println!("{}", pretty(v)));
            }
        },
        Command::Criteria => {
            let v: Option<dto::CriteriaInForce> = c.get("/api/v1/criteria").await?;
            out.show(&v, |v| match v {
                None => println!("No criteria adopted yet: the parliament adopts them by vote (parliament propose --criteria FILE)."),
                Some(v) => {
                    println!(
                        "{} version {} (hash {}), adopted {}",
                        j(&v.criteria.name),
                        j(&v.criteria.version),
                        j(&v.hash),
                        j(&v.adopted_on)
                    );
                    println!("{}", serde_json::to_string_pretty(&v.criteria.rule).unwrap_or_default());
                }
            });
        }
        Command::Report(r) => return report(c, out, r).await,
        Command::Token(TokenCmd::Create {
            role,
            seat,
            producer,
        }) => {
            let v: dto::TokenCreated = c
                .post(
                    "/api/v1/tokens",
                    &dto::TokenBody {
                        role: role.clone(),
                        seat: seat.clone(),
                        producer: producer.clone(),
                    },
                )
                .await?;
            out.show(&v, |v| {
                println!("{} token (shown once): {}", j(&v.role), j(&v.token));
            });
        }
        Command::Token(TokenCmd::List) => {
            let v: Vec<dto::TokenRow> = c.get("/api/v1/tokens").await?;
            out.show(&v, |v| {
                let rows = v
                    .iter()
                    .map(|t| {
                        // A role with a field reads `seat 3`, `outlet out_…`.
                        let role = match serde_json::to_value(&t.role).unwrap_or_default() {
                            serde_json::Value::Object(o) => o
                                .iter()
                                .map(|(k, v)| format!("{k} {}", s(v)))
                                .collect::<Vec<_>>()
                                .join(" "),
                            other => s(&other),
                        };
                        vec![j(&t.id), role]
                    })
                    .collect();
                table(&["id", "role"], rows);
            });
        }
        Command::Token(TokenCmd::Revoke { id }) => {
            let v: dto::TokenRevoked = c
                .post(&format!("/api/v1/tokens/{id}/revoke"), &json!({}))
                .await?;
            out.show(&v, |_| {
                println!("Token {id} revoked: it opens nothing from now on.");
            });
        }
        Command::Bank(BankCmd::Set {
            outlet,
            holder,
            iban,
            bic,
            creditor_id,
        }) => {
            let v: BankAccount = c
                .post(
                    "/api/v1/bank",
                    &dto::BankBody {
                        outlet: *outlet,
                        holder: holder.clone(),
                        iban: iban.clone(),
                        bic: bic.clone(),
                        creditor_id: creditor_id.clone(),
                    },
                )
                .await?;
            out.show(&v, |v| {
                println!("Bank account set: {} {}", j(&v.holder), j(&v.iban));
            });
        }
        Command::Bank(BankCmd::Mandate {
            member,
            reference,
            signed_on,
            holder,
            iban,
            bic,
        }) => {
            let v: dto::MandateRecorded = c
                .post(
                    "/api/v1/mandates",
                    &dto::MandateBody {
                        member: *member,
                        reference: reference.clone(),
                        signed_on: *signed_on,
                        holder: holder.clone(),
                        iban: iban.clone(),
                        bic: bic.clone(),
                    },
                )
                .await?;
            out.show(&v, |v| {
                println!(
                    "Mandate {} (signed {}) recorded for {}",
                    j(&v.reference),
                    v.signed_on,
                    v.member
                );
            });
        }
        Command::Bank(BankCmd::Contributions {
            period,
            on,
            out: file,
        }) => {
            let v: dto::ContributionsFile = bank_file(c, "contributions", *period, *on).await?;
            write_private(file, v.xml.as_bytes())?;
            let summary = json!({ "file": file, "collection": v.collection, "count": v.count,
                                  "total": v.total, "without_mandate": v.without_mandate });
            out.show(&summary, |_| {
                println!(
                    "Wrote {} direct debits of {period}'s contributions ({} EUR, collection {}) to {}.",
                    v.count,
                    v.total,
                    v.collection,
                    file.display()
                );
                if v.without_mandate > 0 {
                    println!(
                        "  {} members have no mandate: collect theirs another way.",
                        v.without_mandate
                    );
                }
            });
        }
        Command::Bank(BankCmd::Payouts {
            period,
            on,
            out: file,
        }) => {
            let v: dto::PayoutsFile = bank_file(c, "payouts", *period, *on).await?;
            write_private(file, v.xml.as_bytes())?;
            out.show(&json!({ "file": file, "execution": v.execution }), |_| {
                println!(
                    "Wrote the transfers of {period}'s payouts to {} (execution {}): import it in the caisse's online banking.",
                    file.display(),
                    v.execution
                );
            });
        }
        Command::Backup {
            out: file,
            with_key,
            passphrase_file,
        } => {
            // Ask for the passphrase before anything is written.
            let pass = if *with_key {
                Some(keybackup::passphrase(passphrase_file.as_deref())?)
            } else {
                None
            };
            let path = std::path::absolute(file)
                .with_context(|| format!("bad path {}", file.display()))?;
            let done: BackupDone = collect(
                c,
                "/api/v1/backups",
                &serde_json::json!(dto::BackupBody { out: path.clone() }),
                "copying the store",
            )
            .await?;
            let key_bundle = match &pass {
                Some(pass) => {
                    let bundle = keybackup::bundle_path(&path);
                    keybackup::seal(&cli.data_dir, &bundle, pass)?;
                    Some(bundle)
                }
                None => None,
            };
            /// What `backup` answers: the node's report and the key bundle
            /// written here, if any.
            #[derive(serde::Serialize)]
            struct Written {
                #[serde(flatten)]
                done: BackupDone,
                key_bundle: Option<PathBuf>,
            }
            out.show(&Written { done, key_bundle }, |v| {
                println!(
                    "Backup written to {}: {} records, {} journal entries, {} bytes.",
                    j(&v.done.path),
                    v.done.records,
                    v.done.entries,
                    v.done.bytes
                );
                match &v.key_bundle {
                    Some(b) => println!(
                        "caisse.key and config.toml sealed under your passphrase in {}: without the passphrase it is useless, so keep the passphrase apart.",
                        b.display()
                    ),
                    None => println!("Keep caisse.key apart (or use --with-key)."),
                }
            });
        }
        Command::Card(CardCmd::Print {
            members,
            all,
            contact,
            out: file,
        }) => {
            let v: dto::CardsPrinted = c
                .post(
                    "/api/v1/cards/print",
                    &dto::PrintBody {
                        members: members.clone(),
                        all: *all,
                        contact: contact.clone(),
                    },
                )
                .await?;
            write_private(file, v.html.as_bytes())?;
            out.show(&json!({ "cards": v.cards, "file": file }), |_| {
                println!(
                    "Wrote {} cards to {}: open it in a browser and print (A4, actual size).",
                    v.cards,
                    file.display()
                );
            });
        }
        Command::Clock(ClockCmd::Set { today }) => {
            let v: dto::ClockBody = c
                .post("/api/v1/clock", &dto::ClockBody { today: *today })
                .await?;
            out.show(&v, |v| println!("Node date set to {}", v.today));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn unreachable_command() -> ! {
    // `init` and `node` are handled before a client is made.
    std::process::exit(1)
}

async fn member(c: &Client, out: &Output, m: &MemberCmd) -> Result<ExitCode> {
    let show = |v: &dto::MemberView| {
        let r = &v.record;
        field("id", j(&r.id));
        field("name", j(&r.name));
        field("residence", j(&r.residence));
        field("status", j(&r.status));
        field("card", j(&r.card));
        field("household", j(&r.household));
        field("joined", j(&r.joined));
        field("left", j(&r.left));
        field("balance", j(&v.balance));
    };
    match m {
        MemberCmd::Enroll {
            name,
            residence,
            birth_year,
            income,
            household,
            new_household,
            joined,
            pin,
        } => {
            let v: Enrolled = c
                .post(
                    "/api/v1/members",
                    &EnrollInput {
                        name: name.clone(),
                        residence: residence.clone(),
                        birth_year: *birth_year,
                        income: *income,
                        household: *household,
                        new_household: *new_household,
                        joined: *joined,
                        pin: pin.clone(),
                    },
                )
                .await?;
            out.show(&v, |v| {
                println!("Enrolled member {}", v.member);
                println!("  card      {}", v.card);
                if let Some(h) = &v.household {
                    println!("  household {h}");
                }
                println!("  joined    {}", v.joined);
            });
        }
        MemberCmd::List { from, limit } => {
            let mut path = format!("/api/v1/members?limit={limit}");
            if let Some(f) = from {
                path.push_str(&format!("&from={f}"));
            }
            let v: Vec<dto::MemberView> = c.get(&path).await?;
            out.show(&v, |v| {
                let rows = v
                    .iter()
                    .map(|m| {
                        vec![
                            j(&m.record.id),
                            j(&m.record.name),
                            j(&m.record.status),
                            j(&m.record.card),
                            j(&m.balance),
                        ]
                    })
                    .collect();
                table(&["id", "name", "status", "card", "balance"], rows);
            });
        }
        MemberCmd::Show { id } => {
            let v: dto::MemberView = c.get(&format!("/api/v1/members/{id}")).await?;
            out.show(&v, show);
        }
        MemberCmd::Suspend { id } | MemberCmd::Reinstate { id } => {
            let action = if matches!(m, MemberCmd::Suspend { .. }) {
                "suspend"
            } else {
                "reinstate"
            };
            let v: MemberRecord = c
                .post(
                    &format!("/api/v1/members/{id}/{action}"),
                    &dto::MemberActionBody::default(),
                )
                .await?;
            out.show(&v, |v| println!("Member {} is now {}", v.id, j(&v.status)));
        }
        MemberCmd::Leave { id, on } => {
            let v: MemberRecord = c
                .post(
                    &format!("/api/v1/members/{id}/leave"),
                    &dto::MemberActionBody { on: *on, pin: None },
                )
                .await?;
            out.show(&v, |v| println!("Member {} left on {}", v.id, j(&v.left)));
        }
        MemberCmd::Pin { id, pin } => {
            let v: dto::PinSet = c
                .post(
                    &format!("/api/v1/members/{id}/pin"),
                    &dto::MemberActionBody {
                        on: None,
                        pin: Some(pin.clone()),
                    },
                )
                .await?;
            out.show(&v, |v| {
                println!("PIN set for card {} (card unlocked)", v.card)
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn outlet(c: &Client, out: &Output, o: &OutletCmd) -> Result<ExitCode> {
    match o {
        OutletCmd::Register { name, categories } => {
            let v: OutletRegistered = c
                .post(
                    "/api/v1/outlets",
                    &dto::OutletBody {
                        name: name.clone(),
                        categories: categories.clone(),
                    },
                )
                .await?;
            out.show(&v, |v| {
                println!("Registered outlet {}", v.outlet);
                println!(
                    "  till token (shown once, give it to the outlet): {}",
                    j(&v.token)
                );
            });
        }
        OutletCmd::List => {
            let v: Vec<dto::OutletView> = c.get("/api/v1/outlets").await?;
            out.show(&v, |v| {
                let rows = v
                    .iter()
                    .map(|o| {
                        let cats: Vec<String> =
                            o.record.categories.iter().map(|(c, _)| j(c)).collect();
                        let tills = match &o.suspended {
                            None => "open".to_owned(),
                            Some(b) => format!("SUSPENDED: {}", j(&b.reason)),
                        };
                        vec![
                            j(&o.record.id),
                            j(&o.record.name),
                            cats.join(","),
                            j(&o.owed),
                            tills,
                        ]
                    })
                    .collect();
                table(&["id", "name", "categories", "owed", "tills"], rows);
            });
        }
        OutletCmd::Suspend { outlet, reason } => {
            let v: dto::OutletSuspension = c
                .post(
                    &format!("/api/v1/outlets/{outlet}/suspend"),
                    &dto::ReasonBody {
                        reason: reason.clone(),
                    },
                )
                .await?;
            out.show(&v, |_| {
                println!("The tills of {outlet} are suspended: their sales are refused until `caisse outlet reinstate {outlet}`.");
            });
        }
        OutletCmd::Reinstate { outlet } => {
            let v: dto::OutletSuspension = c
                .post(
                    &format!("/api/v1/outlets/{outlet}/reinstate"),
                    &dto::ReasonBody::default(),
                )
                .await?;
            out.show(&v, |_| println!("The tills of {outlet} are open again."));
        }
        OutletCmd::Payout { outlet, period } => {
            let v: PayoutDone = c
                .post(
                    &format!("/api/v1/outlets/{outlet}/payouts"),
                    &dto::PeriodBody { period: *period },
                )
                .await?;
            out.show(&v, |v| {
                if v.already_paid {
                    println!(
                        "Already paid for {}: {} EUR (nothing changed)",
                        v.period, v.amount
                    );
                } else {
                    println!("Paid out {} EUR for {}", v.amount, v.period);
                }
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn ledger(c: &Client, out: &Output, l: &LedgerCmd) -> Result<ExitCode> {
    match l {
        LedgerCmd::Accounting { period, out: file } => {
            let v: dto::AccountingFile = c
                .get(&format!("/api/v1/ledger/accounting?period={period}"))
                .await?;
            write_private(file, v.fec.as_bytes())?;
            out.show(
                &json!({ "file": file, "lines": v.lines, "debit": v.debit, "credit": v.credit }),
                |_| {
                    println!(
                        "Wrote {} lines for {period} to {} (debits {} = credits {} EUR)",
                        v.lines,
                        file.display(),
                        v.debit,
                        v.credit
                    );
                },
            );
            return Ok(ExitCode::SUCCESS);
        }
        LedgerCmd::Balances => {
            let v: Vec<dto::BalanceView> = c.get("/api/v1/ledger/balances").await?;
            out.show(&v, |v| {
                let rows = v
                    .iter()
                    .map(|b| vec![j(&b.account), j(&b.balance)])
                    .collect();
                table(&["account", "balance"], rows);
            });
        }
        LedgerCmd::Journal { from, limit } => {
            // Read as JSON, not as journal entries: for an auditor the member
            // ids are pseudonyms, which no typed id accepts.
            let v: Value = c
                .get(&format!("/api/v1/ledger/journal?from={from}&limit={limit}"))
                .await?;
            out.value(&v, |v| {
                for e in v.as_array().into_iter().flatten() {
                    let kind = e["kind"]
                        .as_object()
                        .and_then(|o| o.keys().next().cloned())
                        .unwrap_or_default();
                    println!("#{} {kind}", s(&e["seq"]));
                    for p in e["postings"].as_array().into_iter().flatten() {
                        let acct = match &p["account"] {
                            Value::Object(o) => o
                                .iter()
                                .next()
                                .map(|(k, v)| format!("{k}:{}", s(v)))
                                .unwrap_or_default(),
                            other => s(other),
                        };
                        println!("    {:>12}  {acct}", s(&p["amount"]));
                    }
                }
            });
        }
        LedgerCmd::Check { full } => {
            let v = audit(c, *full).await?;
            let ok = v.ok();
            out.show(&v, |v| {
                if v.from == 0 {
                    println!(
                        "Checked {} journal entries (the whole journal) and {} accounts.",
                        v.entries, v.accounts
                    );
                } else {
                    println!(
                        "Checked the {} journal entries since the last clean audit (from entry {}) and {} accounts; the {} entries before were verified by earlier audits, the whole journal last read on {} (`caisse ledger check --full` reads it all again).",
                        v.entries,
                        v.from,
                        v.accounts,
                        v.from,
                        v.full_at
                            .map_or_else(|| "an unknown day".into(), |t| Day::from_unix(t).to_string())
                    );
                }
                if ok {
                    println!("Ledger OK: postings balance, chain intact, balances match the journal, no allocation twice, every purchase recorded once.");
                } else {
                    for f in &v.findings {
                        println!("PROBLEM {}: {}", j(&f.item), j(&f.problem));
                    }
                    if v.more_findings > 0 {
                        println!(
                            "... and {} more problems not listed (the first {} are).",
                            v.more_findings,
                            v.findings.len()
                        );
                    }
                }
            });
            if !ok {
                return Ok(ExitCode::from(3));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Start a ledger audit on the node and wait for its report, however long
/// the journal.
async fn audit(c: &Client, full: bool) -> anyhow::Result<CheckReport> {
    collect(
        c,
        "/api/v1/ledger/checks",
        &serde_json::json!({ "full": full }),
        "auditing the ledger",
    )
    .await
}

/// Start a job on the node with a POST of `body` to `path` and wait for
/// its result, however long it takes: the node answers the start at once
/// and the result is asked for at `path/{id}` (not held in one request,
/// which a proxy or the node's own time limit would cut), showing the
/// time so far on a terminal as `doing`.
async fn collect<T: serde::de::DeserializeOwned>(
    c: &Client,
    path: &str,
    body: &serde_json::Value,
    doing: &str,
) -> anyhow::Result<T> {
    use std::io::{IsTerminal, Write};
    #[derive(serde::Deserialize)]
    struct Run<T> {
        id: u64,
        finished: bool,
        seconds: u64,
        result: Option<T>,
        error: Option<String>,
    }
    let mut run: Run<T> = c.post(path, body).await?;
    let shown = std::io::stderr().is_terminal();
    let mut wait = std::time::Duration::from_millis(50);
    while !run.finished {
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(std::time::Duration::from_secs(2));
        run = c.get(&format!("{path}/{}", run.id)).await?;
        if shown && run.seconds > 0 {
            eprint!("\r{doing}: {} s", run.seconds);
            let _ = std::io::stderr().flush();
        }
    }
    if shown && run.seconds > 0 {
        eprintln!();
    }
    match (run.result, run.error) {
        (Some(result), _) => Ok(result),
        (None, error) => anyhow::bail!(
            "{}; see the node's log (`caisse job list`), then run it again",
            error.unwrap_or_else(|| "it stopped without a result".into())
        ),
    }
}

fn accreditation_row(a: &dto::AccreditationView) -> Vec<String> {
    let scope: Vec<String> = a
        .scope
        .iter()
        .map(|i| format!("{}:{}%", j(&i.category), i.coverage_pct))
        .collect();
    vec![
        j(&a.id).chars().take(12).collect(),
        j(&a.caisse).chars().take(8).collect(),
        j(&a.subject_name),
        scope.join(","),
        format!("{}..{}", a.valid_from, a.valid_until),
        j(&a.status),
    ]
}

fn read_structured<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    if path.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(&text).map_err(|e| anyhow!("{}: {e}", path.display()))
    } else {
        toml::from_str(&text).map_err(|e| anyhow!("{}: {e}", path.display()))
    }
}

fn parse_scope(text: &str) -> Result<Vec<ScopeItem>> {
    ScopeItem::parse_list(text).map_err(|e| anyhow!("--scope {e}"))
}

async fn proposal_kind(c: &Client, a: &ProposeArgs) -> Result<ProposalKind> {
    if let Some(f) = &a.criteria {
        let criteria: caisse_protocol::criteria::Criteria = read_structured(f)?;
        criteria
            .validate()
            .map_err(|e| anyhow!("{}: {e}", f.display()))?;
        return Ok(ProposalKind::Criteria(criteria));
    }
    if let Some(amount) = a.allocation {
        return Ok(ProposalKind::Allocation(AllocationPolicy::PerPerson {
            amount,
        }));
    }
    if let Some(h) = &a.household_allocation {
        let (b, e) = h
            .split_once(':')
            .ok_or_else(|| anyhow!("--household-allocation BASE:PER_EXTRA, e.g. 100:50"))?;
        let base: Amount = b
            .parse()
            .map_err(|e| anyhow!("--household-allocation: {e}"))?;
        let extra: Amount = e
            .parse()
            .map_err(|e| anyhow!("--household-allocation: {e}"))?;
        return Ok(ProposalKind::Allocation(AllocationPolicy::PerHousehold {
            base,
            per_extra_member: extra,
        }));
    }
    if let Some(f) = &a.contribution_scale {
        let scale: caisse_node::policy::ContributionScale = read_structured(f)?;
        return Ok(ProposalKind::ContributionScale(scale));
    }
    if let Some(r) = &a.rollover {
        let rollover = match r.as_str() {
            "carry-over" => Rollover::CarryOver,
            "expire" => Rollover::Expire,
            other => match other.strip_prefix("cap:") {
                Some(max) => Rollover::Cap {
                    max: max
                        .parse()
                        .map_err(|e| anyhow!("--rollover cap:EUR: {e}"))?,
                },
                None => bail!("--rollover: use carry-over, expire or cap:EUR"),
            },
        };
        return Ok(ProposalKind::Rollover(rollover));
    }
    let subject = match (&a.accredit_producer, &a.accredit_outlet) {
        (Some(p), _) => Some(Subject::Producer(
            p.parse::<ProducerId>()
                .map_err(|e| anyhow!("--accredit-producer: {e}"))?,
        )),
        (_, Some(o)) => Some(Subject::Outlet(*o)),
        _ => None,
    };
    if let Some(subject) = subject {
        let scope = parse_scope(a.scope.as_deref().unwrap_or_default())?;
        let today: Day = match a.valid_from {
            Some(d) => d,
            None => c.get::<dto::Status>("/api/v1/status").await?.today,
        };
        let until = a.valid_until.unwrap_or(today.plus(365));
        return Ok(ProposalKind::Accredit {
            subject,
            scope,
            valid_from: today,
            valid_until: until,
        });
    }
    if let Some(acc) = &a.revoke {
        let id: caisse_protocol::ContentId = acc.parse().map_err(|e| anyhow!("--revoke: {e}"))?;
        return Ok(ProposalKind::Revoke {
            accreditation: id,
            reason: a.reason.clone().unwrap_or_default(),
        });
    }
    if let Some(peer) = &a.recognise {
        let id: CaisseId = peer.parse().map_err(|e| anyhow!("--recognise: {e}"))?;
        return Ok(ProposalKind::RecognisePeer { caisse: id });
    }
    if let Some(r) = &a.recognition {
        let policy = match r.as_str() {
            "none" => RecognitionPolicy::None,
            "listed" => RecognitionPolicy::Listed,
            "compatible-criteria" => RecognitionPolicy::CompatibleCriteria,
            _ => bail!("--recognition: use none, listed or compatible-criteria"),
        };
        return Ok(ProposalKind::RecognitionPolicy(policy));
    }
    bail!(
        "say what the proposal changes: --criteria, --allocation, --household-allocation, --contribution-scale, --rollover, --accredit-producer, --accredit-outlet, --revoke, --recognise or --recognition"
    )
}

fn print_proposal(p: &Proposal) {
    println!("Proposal {}: {}", p.id, j(&p.title));
    println!(
        "  voting closes {} (unix time), {} votes so far",
        p.closes,
        p.votes.len()
    );
    if let Some(o) = &p.outcome {
        println!(
            "  {} — yes {}, no {}, abstain {}, of {} seats",
            j(&o.reason),
            o.yes,
            o.no,
            o.abstain,
            o.seats
        );
        println!("  decision {} signed by the caisse", o.decision);
    }
    if !p.elsewhere.is_empty() {
        println!("  Other caisses' decisions about this producer:");
        for e in &p.elsewhere {
            let scope: Vec<String> = e
                .scope
                .iter()
                .map(|x| format!("{} {}%", j(&x.category), x.coverage_pct))
                .collect();
            let theirs = e.their_criteria.as_ref();
            println!(
                "    {}: {} from {} to {}{} — their criteria {} version {}: {}",
                j(&e.caisse_name),
                scope.join(", "),
                e.valid_from,
                e.valid_until,
                if e.revoked { " (revoked)" } else { "" },
                j(&theirs.map(|c| &c.name)),
                j(&theirs.map(|c| c.version)),
                serde_json::to_string(&theirs.map(|c| &c.rule)).unwrap_or_default()
            );
        }
    }
}

/// A producer's page, as `producer page` prints it.
fn print_producer_page(v: &ProducerPage) {
    println!("{} ({})", j(&v.name), v.producer);
    for w in &v.warnings {
        println!("  WARNING: {}", j(w));
    }
    if let Some(d) = &v.dossier {
        println!(
            "Dossier version {}, {} ({})",
            d.version,
            j(&d.commune),
            j(&d.postcode)
        );
    }
    println!("Accreditations:");
    for a in &v.accreditations {
        println!(
            "  {}: {} from {} to {}{}",
            j(&a.caisse_name),
            j(&a.status),
            a.valid_from,
            a.valid_until,
            a.lapses_with
                .as_deref()
                .map(|w| format!(" ({})", caisse_protocol::text::printable(w)))
                .unwrap_or_default()
        );
    }
    println!("What each caisse's criteria require:");
    for r in &v.requirements {
        let verdict = if r.passed {
            "met".to_owned()
        } else {
            let m: Vec<String> = r.missing.iter().map(j).collect();
            format!("missing: {}", m.join("; "))
        };
        println!("  {} — {}: {verdict}", j(&r.caisse_name), j(&r.criteria));
    }
    println!("Sales through the allocation:");
    for x in &v.sales {
        println!(
            "  {} {}: {} EUR in {} lines",
            x.period,
            j(&x.caisse_name),
            x.amount,
            x.lines
        );
    }
}

async fn parliament(c: &Client, out: &Output, p: &ParliamentCmd) -> Result<ExitCode> {
    match p {
        ParliamentCmd::Seat(SeatCmd::Add {
            kind,
            member,
            holder,
        }) => {
            let v: Seat = c
                .post(
                    "/api/v1/parliament/seats",
                    &dto::SeatBody {
                        kind: *kind,
                        member: *member,
                        holder: holder.clone(),
                    },
                )
                .await?;
            out.show(&v, |v| {
                println!(
                    "Added seat-{} ({}) held by {}",
                    v.id,
                    j(&v.kind),
                    j(&v.holder)
                )
            });
        }
        ParliamentCmd::Seat(SeatCmd::Remove { seat }) => {
            let id = seat.trim_start_matches("seat-");
            let v: Seat = c
                .post(&format!("/api/v1/parliament/seats/{id}/remove"), &json!({}))
                .await?;
            out.show(&v, |v| println!("Removed seat-{}", v.id));
        }
        ParliamentCmd::Draw { seats, from, seed } => {
            let text = std::fs::read_to_string(from)
                .with_context(|| format!("cannot read {}", from.display()))?;
            let mut volunteers = Vec::new();
            for (n, line) in text.lines().enumerate() {
                let t = line.trim();
                if t.is_empty() || t.starts_with('#') {
                    continue;
                }
                let id: MemberId = t
                    .parse()
                    .map_err(|e| anyhow!("{} line {}: {e}", from.display(), n + 1))?;
                volunteers.push(id);
            }
            let v: Drawn = c
                .post(
                    "/api/v1/parliament/draw",
                    &dto::DrawBody {
                        seats: *seats,
                        seed: *seed,
                        volunteers,
                    },
                )
                .await?;
            out.show(&v, |v| {
                println!(
                    "Drew {} citizen seats with seed {} among {} volunteers:",
                    v.drawn.len(),
                    v.seed,
                    v.volunteers.len()
                );
                for seat in &v.seats {
                    println!("  seat-{}  {}", seat.id, j(&seat.member));
                }
                println!("Anyone can check the draw: same volunteers, same seed, same seats.");
            });
        }
        ParliamentCmd::Propose(a) => {
            let kind = proposal_kind(c, a).await?;
            let v: Proposal = c
                .post(
                    "/api/v1/parliament/proposals",
                    &dto::ProposeBody {
                        title: a.title.clone(),
                        kind,
                        window_minutes: a.window_minutes,
                    },
                )
                .await?;
            out.show(&v, print_proposal);
        }
        ParliamentCmd::Vote {
            proposal,
            seat,
            choice,
        } => {
            let v: VoteRecorded = c
                .post(
                    &format!("/api/v1/parliament/proposals/{proposal}/votes"),
                    &dto::VoteBody {
                        seat: seat.clone(),
                        choice: *choice,
                    },
                )
                .await?;
            out.show(&v, |v| match &v.replaced {
                Some(old) => println!(
                    "seat-{} now votes {} (replacing its earlier vote: {})",
                    v.seat,
                    j(&v.choice),
                    j(old)
                ),
                None => println!("seat-{} votes {}", v.seat, j(&v.choice)),
            });
        }
        ParliamentCmd::Close { proposal } => {
            let v: Proposal = c
                .post(
                    &format!("/api/v1/parliament/proposals/{proposal}/close"),
                    &json!({}),
                )
                .await?;
            out.show(&v, print_proposal);
        }
        ParliamentCmd::Show => {
            let v: dto::ParliamentShow = c.get("/api/v1/parliament").await?;
            out.show(&v, |v| {
                let rows = v
                    .seats
                    .iter()
                    .map(|x| {
                        vec![
                            format!("seat-{}", x.id),
                            j(&x.kind),
                            j(&x.holder),
                            match x.removed {
                                None => "active".into(),
                                Some(d) => format!("removed {d}"),
                            },
                        ]
                    })
                    .collect();
                table(&["seat", "kind", "holder", "status"], rows);
                match &v.composition_problem {
                    Some(p) => println!("\n{p}"),
                    None => println!(
                        "\nThe parliament can vote (at least half of its seats are citizens)."
                    ),
                }
                println!();
                for p in &v.proposals {
                    print_proposal(p);
                }
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn producer(c: &Client, out: &Output, p: &ProducerCmd) -> Result<ExitCode> {
    match p {
        ProducerCmd::Register { name, attributes } => {
            let attrs: caisse_protocol::criteria::Attributes = read_structured(attributes)?;
            let v: ProducerRecord = c
                .post(
                    "/api/v1/producers",
                    &dto::ProducerBody {
                        name: name.clone(),
                        attributes: attrs,
                    },
                )
                .await?;
            out.show(&v, |v| {
                println!("Registered producer {} ({})", v.id, j(&v.name))
            });
        }
        ProducerCmd::List => {
            let v: Vec<dto::ProducerView> = c.get("/api/v1/producers").await?;
            out.show(&v, |v| {
                let rows = v
                    .iter()
                    .map(|p| {
                        let active = p
                            .accreditations
                            .iter()
                            .filter(|a| a.status == "active")
                            .count();
                        vec![j(&p.id), j(&p.name), active.to_string()]
                    })
                    .collect();
                table(&["id", "name", "active accreditations"], rows);
            });
        }
        ProducerCmd::Show { id } => {
            let v: dto::ProducerView = c.get(&format!("/api/v1/producers/{id}")).await?;
            out.show(&v, |v| {
                println!("{} ({})", j(&v.name), v.id);
                println!(
                    "attributes: {}",
                    serde_json::to_string(&v.attributes).unwrap_or_default()
                );
                for a in &v.accreditations {
                    println!(
                        "  accredited by caisse {} under criteria {}: {}",
                        a.caisse,
                        j(&a.criteria).chars().take(12).collect::<String>(),
                        accreditation_row(a).join("  ")
                    );
                }
            });
        }
        ProducerCmd::Keygen { .. } | ProducerCmd::Sign { .. } => {
            unreachable!("handled offline before connecting")
        }
        ProducerCmd::Publish {
            signed,
            key,
            dossier: file,
            federation,
        } => {
            let hex_text = match (signed, key, file) {
                (Some(p), _, _) => std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read {}", p.display()))?
                    .trim()
                    .to_owned(),
                (None, Some(k), Some(f)) => {
                    let fed =
                        FederationId::new(federation).map_err(|e| anyhow!("--federation: {e}"))?;
                    hex::encode(dossier::sign(&dossier::read_key(k)?, f, &fed)?.1)
                }
                _ => bail!("give --signed FILE, or --key and --dossier to sign now"),
            };
            let v: dto::DossierPublished = c
                .post(
                    "/api/v1/producers/dossiers",
                    &dto::DossierBody { dossier: hex_text },
                )
                .await?;
            out.show(&v, |v| {
                println!(
                    "Dossier version {} of {} ({}) published: every caisse of the federation will see it.",
                    j(&v.version),
                    j(&v.name),
                    v.producer
                );
                if let Some(r) = &v.review {
                    println!("  {}", caisse_protocol::text::printable(r));
                }
            });
        }
        ProducerCmd::Adopt {
            id,
            siret,
            commune,
            postcode,
            location,
        } => {
            let v: dto::Adopted = c
                .post(
                    &format!("/api/v1/producers/{id}/adopt"),
                    &dto::AdoptBody {
                        siret: siret.clone(),
                        commune: commune.clone(),
                        postcode: postcode.clone(),
                        location: location.clone(),
                    },
                )
                .await?;
            out.show(&v, |v| {
                println!(
                    "{} now has its own identity {} (key held by this caisse until `producer handover`); its accreditations were issued again for it.",
                    j(&v.name),
                    v.producer
                );
            });
        }
        ProducerCmd::Handover { id, out: file } => {
            let v: dto::KeyHandedOver = c
                .post(&format!("/api/v1/producers/{id}/handover"), &json!({}))
                .await?;
            dossier::write_key(file, &v.key)?;
            out.show(&json!({ "producer": v.producer, "key_file": file }), |_| {
                println!(
                    "Key of {} written to {}: give it to the producer; this caisse no longer holds it.",
                    v.producer,
                    file.display()
                );
            });
        }
        ProducerCmd::Dossier { id } => {
            let v: dto::DossierShown = c.get(&format!("/api/v1/producers/{id}/dossier")).await?;
            out.show(&v, |v| println!("{}", pretty(&v.dossier)));
        }
        ProducerCmd::Page { id } => {
            let path = match id {
                Some(id) => format!("/api/v1/producers/{id}/page"),
                None => "/api/v1/producer".to_owned(),
            };
            let v: ProducerPage = c.get(&path).await?;
            out.show(&v, print_producer_page);
        }
        ProducerCmd::Registry {
            category,
            label,
            max_km,
            caisse,
        } => {
            let mut q = Vec::new();
            for (k, v) in [("category", category), ("label", label), ("caisse", caisse)] {
                if let Some(v) = v {
                    q.push(format!("{k}={v}"));
                }
            }
            if let Some(m) = max_km {
                q.push(format!("max_km={m}"));
            }
            let v: Vec<RegistryRow> = c
                .get(&format!("/api/v1/registry/producers?{}", q.join("&")))
                .await?;
            out.show(&v, |v| {
                let rows = v
                    .iter()
                    .map(|p| {
                        let by: Vec<String> = p
                            .accredited_by
                            .iter()
                            .filter(|a| a.status == "active")
                            .map(|a| format!("{} until {}", j(&a.caisse_name), a.valid_until))
                            .collect();
                        vec![
                            j(&p.producer),
                            j(&p.name),
                            j(&p.commune),
                            p.distance_km.map_or("—".into(), |d| format!("{d} km")),
                            by.join("; "),
                        ]
                    })
                    .collect();
                table(
                    &["producer", "name", "commune", "distance", "accredited by"],
                    rows,
                );
            });
        }
        ProducerCmd::Evaluate { id, against } => {
            let q = against
                .as_ref()
                .map(|c| format!("?caisse={c}"))
                .unwrap_or_default();
            let v: dto::EvaluationView = c
                .get(&format!("/api/v1/producers/{id}/evaluation{q}"))
                .await?;
            out.show(&v, |v| {
                println!(
                    "Producer {} ({}{}):",
                    v.producer,
                    j(&v.source),
                    v.distance_km
                        .map(|d| format!(", {d} km from our territory"))
                        .unwrap_or_default()
                );
                let e = &v.evaluation;
                println!(
                    "Against criteria {} version {}:",
                    j(&v.criteria.as_ref().map(|c| &c.name)),
                    j(&v.criteria.as_ref().map(|c| c.version))
                );
                for o in &e.outcomes {
                    let mark = if o.passed { "PASS" } else { "FAIL" };
                    println!("  {mark}  {}: {}", j(&o.rule), j(&o.explanation));
                }
                if e.passed {
                    println!("Meets the criteria.");
                    if let Some(l) = &v.would_lapse_with {
                        println!(
                            "  An accreditation would end on {}, with certificate {} ({}).",
                            l.day,
                            j(&l.certificate),
                            j(&l.label)
                        );
                    }
                } else {
                    println!("Does not meet the criteria:");
                    for f in &e.failures {
                        println!("  - {}", j(f));
                    }
                }
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Fetch a SEPA file (`payouts` or `contributions`) of `period` and write
/// its XML to `file`, readable by its owner only; returns the node's answer.
async fn bank_file<T: serde::de::DeserializeOwned>(
    c: &Client,
    kind: &str,
    period: Period,
    on: Option<Day>,
) -> Result<T> {
    let mut path = format!("/api/v1/{kind}/sepa?period={period}");
    if let Some(d) = on {
        path.push_str(&format!("&on={d}"));
    }
    Ok(c.get(&path).await?)
}

/// Write an export file readable by its owner only (it is for a
/// researcher, not for every account on the machine).
fn write_csv<T: Serialize>(path: &Path, header: &[&str], rows: &[T]) -> Result<usize> {
    let text = caisse_node::report::to_csv(header, rows);
    write_private(path, text.as_bytes())?;
    Ok(rows.len())
}

/// Write `bytes` to `path`, replacing it, readable by its owner only.
fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(bytes)
        .with_context(|| format!("cannot write {}", path.display()))
}

async fn report(c: &Client, out: &Output, r: &ReportArgs) -> Result<ExitCode> {
    match &r.export {
        Some(ReportCmd::Export {
            period, out: dir, ..
        }) => {
            let v: Export = c
                .get(&format!("/api/v1/report/export?period={period}"))
                .await?;
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            let p = write_csv(
                &dir.join("purchases.csv"),
                &caisse_node::report::PURCHASE_COLUMNS,
                &v.purchases,
            )?;
            let m = write_csv(
                &dir.join("members.csv"),
                &caisse_node::report::MEMBER_COLUMNS,
                &v.members,
            )?;
            out.show(
                &json!({ "purchases": p, "members": m, "dir": dir,
                         "withheld_purchases": v.withheld_purchases, "withheld_members": v.withheld_members,
                         "model": v.model }),
                |_| {
                    println!(
                        "Wrote {p} purchase lines and {m} members (pseudonyms only) to {}",
                        dir.display()
                    );
                    println!(
                        "Withheld to keep every row among at least {} alike: {} purchase lines, {} members.",
                        v.k, v.withheld_purchases, v.withheld_members
                    );
                },
            );
        }
        None => {
            let period = r.period.ok_or_else(|| anyhow!("give --period YYYY-MM"))?;
            let v: dto::ReportAnswer = c.get(&format!("/api/v1/report?period={period}")).await?;
            if cli_json(out, &r.format) {
                println!("{}", pretty(&v.report));
            } else {
                print!("{}", caisse_protocol::text::printable(&v.markdown));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn cli_json(out: &Output, format: &str) -> bool {
    out.json || format == "json"
}

#[cfg(test)]
mod tests {
    /// Every answer of the node is read as its type (`caisse_node::dto` or
    /// the core's), so a field renamed in the API fails to compile here; the
    /// journal is the one exception (an auditor's copy carries pseudonyms,
    /// which no typed id accepts).
    #[test]
    fn answers_are_read_as_types_not_json_values() {
        let source = include_str!("main.rs");
        let untyped: Vec<&str> = source
            .lines()
            .filter(|l| l.contains(concat!(": ", "Value = c")))
            .collect();
        assert_eq!(
            untyped.len(),
            1,
            "only the journal may be read as a JSON value: {untyped:#?}"
        );
    }
}
