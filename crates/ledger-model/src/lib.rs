//! A deliberately naive reference model of the ledger, for differential tests.
//!
//! It shares no code with the real state machine and makes different choices on purpose:
//! plain vectors searched linearly, a whole-state clone to roll back a linked chain, and no
//! stored balances at all: every balance (and every closed flag) is recomputed from the
//! transfers and the moments their pending status changed. If the real state machine's
//! incremental bookkeeping ever drifts, the two disagree.

use ledger::{
    Account, AccountBalance, AccountFilter, AccountFilterFlags, AccountFlags,
    CreateAccountResult as AR, CreateTransferResult as TR, Transfer, TransferFlags,
    TransferPendingStatus as PS,
};

const TS_MAX: u64 = (1 << 63) - 1;
const EVENTS_MAX: usize = 8189;

type Outcome<R> = Result<(R, u64), R>;

#[derive(Clone, Debug)]
pub struct ModelTransfer {
    pub transfer: Transfer,
    pub status: PS,
    /// When the pending status stopped being `Pending`.
    pub resolved_at: Option<u64>,
}

#[derive(Clone, Debug, Default)]
pub struct Model {
    /// Accounts as created: balances are always zero here and `closed` is the creation flag.
    pub accounts: Vec<Account>,
    pub transfers: Vec<ModelTransfer>,
    pub failed: Vec<u128>,
    pub timestamp_last: u64,
    pub expiry_timestamp_last: u64,
    /// (account id, timestamp) of every change to an account, in order.
    pub changes: Vec<(u128, u64)>,
}

impl Model {
    fn created_account(&self, id: u128) -> Option<&Account> {
        self.accounts.iter().find(|a| a.id == id)
    }

    fn find_transfer(&self, id: u128) -> Option<&ModelTransfer> {
        self.transfers.iter().find(|t| t.transfer.id == id)
    }

    /// The account as it is after all changes with timestamp <= `at`.
    pub fn account_at(&self, id: u128, at: u64) -> Option<Account> {
        let mut a = *self.created_account(id)?;
        for mt in &self.transfers {
            let t = &mt.transfer;
            if t.timestamp > at {
                continue;
            }
            let pending_open = t.flags.contains(TransferFlags::PENDING)
                && mt.resolved_at.is_none_or(|resolved| resolved > at);
            let posts = !t.flags.contains(TransferFlags::PENDING)
                && !t.flags.contains(TransferFlags::VOID_PENDING_TRANSFER);
            if t.debit_account_id == id {
                if pending_open {
                    a.debits_pending += t.amount;
                    if t.flags.contains(TransferFlags::CLOSING_DEBIT) {
                        a.flags.insert(AccountFlags::CLOSED);
                    }
                }
                if posts {
                    a.debits_posted += t.amount;
                }
            }
            if t.credit_account_id == id {
                if pending_open {
                    a.credits_pending += t.amount;
                    if t.flags.contains(TransferFlags::CLOSING_CREDIT) {
                        a.flags.insert(AccountFlags::CLOSED);
                    }
                }
                if posts {
                    a.credits_posted += t.amount;
                }
            }
        }
        Some(a)
    }

    pub fn account(&self, id: u128) -> Option<Account> {
        self.account_at(id, u64::MAX)
    }

    pub fn transfer(&self, id: u128) -> Option<(Transfer, PS)> {
        self.find_transfer(id).map(|mt| (mt.transfer, mt.status))
    }

    /// One batch of `count` events sealed at `timestamp`: expires what is due, gives `events` the
    /// first event timestamp, and moves `timestamp_last` past every timestamp the batch used.
    fn batch<R>(
        &mut self,
        timestamp: u64,
        count: usize,
        events: impl FnOnce(&mut Model, u64) -> Vec<R>,
    ) -> Vec<R> {
        let now = timestamp.max(self.timestamp_last + 1);
        let expired = self.expire(now);
        let out = events(self, now + expired);
        if expired + count as u64 > 0 {
            self.timestamp_last = now + expired + count as u64 - 1;
        }
        out
    }

    pub fn apply_accounts(&mut self, timestamp: u64, events: &[Account]) -> Vec<(AR, u64)> {
        self.batch(timestamp, events.len(), |model, first| {
            model.run(
                events,
                first,
                |e| e.flags.contains(AccountFlags::LINKED),
                |e| e.flags.contains(AccountFlags::IMPORTED),
                |e| e.timestamp,
                Model::create_account,
                AR::Created,
                AR::LinkedEventFailed,
                AR::LinkedEventChainOpen,
                [
                    AR::ImportedEventExpected,
                    AR::ImportedEventNotExpected,
                    AR::TimestampMustBeZero,
                    AR::ImportedEventTimestampOutOfRange,
                    AR::ImportedEventTimestampMustNotAdvance,
                ],
                |_, _, _| {},
            )
        })
    }

    pub fn apply_transfers(&mut self, timestamp: u64, events: &[Transfer]) -> Vec<(TR, u64)> {
        self.batch(timestamp, events.len(), |model, first| {
            model.run(
                events,
                first,
                |e| e.flags.contains(TransferFlags::LINKED),
                |e| e.flags.contains(TransferFlags::IMPORTED),
                |e| e.timestamp,
                Model::create_transfer,
                TR::Created,
                TR::LinkedEventFailed,
                TR::LinkedEventChainOpen,
                [
                    TR::ImportedEventExpected,
                    TR::ImportedEventNotExpected,
                    TR::TimestampMustBeZero,
                    TR::ImportedEventTimestampOutOfRange,
                    TR::ImportedEventTimestampMustNotAdvance,
                ],
                |model, event, result| {
                    if matches!(
                        result,
                        TR::DebitAccountNotFound
                            | TR::CreditAccountNotFound
                            | TR::PendingTransferNotFound
                            | TR::ExceedsCredits
                            | TR::ExceedsDebits
                            | TR::DebitAccountAlreadyClosed
                            | TR::CreditAccountAlreadyClosed
                    ) {
                        model.failed.push(event.id);
                    }
                },
            )
        })
    }

    fn expire(&mut self, now: u64) -> u64 {
        // Expire in (deadline, creation order) order, at most one batch's worth.
        let mut due: Vec<(u64, usize)> = self
            .transfers
            .iter()
            .enumerate()
            .filter(|(_, mt)| mt.status == PS::Pending && mt.transfer.timeout > 0)
            .map(|(i, mt)| {
                (
                    mt.transfer.timestamp + u64::from(mt.transfer.timeout) * 1_000_000_000,
                    i,
                )
            })
            .filter(|(deadline, _)| *deadline <= now)
            .collect();
        due.sort();
        due.truncate(EVENTS_MAX);
        for (n, (_, i)) in due.iter().enumerate() {
            let ts = now + n as u64;
            self.transfers[*i].status = PS::Expired;
            self.transfers[*i].resolved_at = Some(ts);
            let t = self.transfers[*i].transfer;
            self.changes.push((t.debit_account_id, ts));
            self.changes.push((t.credit_account_id, ts));
            self.expiry_timestamp_last = ts;
        }
        due.len() as u64
    }

    #[allow(clippy::too_many_arguments)]
    fn run<E, R: Copy + PartialEq>(
        &mut self,
        events: &[E],
        first: u64,
        linked: impl Fn(&E) -> bool,
        imported: impl Fn(&E) -> bool,
        event_timestamp: impl Fn(&E) -> u64,
        create: fn(&mut Model, u64, &E) -> Outcome<R>,
        created: R,
        linked_failed: R,
        chain_open: R,
        [expected, not_expected, ts_zero, ts_range, ts_advance]: [R; 5],
        on_failure: impl Fn(&mut Model, &E, R),
    ) -> Vec<(R, u64)> {
        let mut out: Vec<(R, u64)> = Vec::new();
        let mut chain: Option<(usize, Model)> = None;
        let mut broken = false;
        let batch_imported = events.first().is_some_and(&imported);
        for (i, e) in events.iter().enumerate() {
            let ts = first + i as u64;
            if linked(e) && chain.is_none() {
                chain = Some((i, self.clone()));
            }
            let outcome = if linked(e) && i == events.len() - 1 {
                Err(chain_open)
            } else if broken {
                Err(linked_failed)
            } else if batch_imported != imported(e) {
                Err(if imported(e) { not_expected } else { expected })
            } else if imported(e) && (event_timestamp(e) == 0 || event_timestamp(e) > TS_MAX) {
                Err(ts_range)
            } else if imported(e) && event_timestamp(e) >= ts {
                Err(ts_advance)
            } else if !imported(e) && event_timestamp(e) != 0 {
                Err(ts_zero)
            } else {
                create(self, ts, e)
            };
            let (result, result_ts) = match outcome {
                Ok(ok) => ok,
                Err(result) => (result, ts),
            };
            if result != created {
                if let Some((start, saved)) = &chain
                    && !broken
                {
                    broken = true;
                    let start = *start;
                    let failed_before = self.failed.clone();
                    *self = saved.clone();
                    self.failed = failed_before;
                    for earlier in &mut out[start..i] {
                        earlier.0 = linked_failed;
                    }
                }
                on_failure(self, e, result);
            }
            out.push((result, result_ts));
            if chain.is_some() && (!linked(e) || result == chain_open) {
                chain = None;
                broken = false;
            }
        }
        out
    }

    fn create_account(&mut self, ts: u64, a: &Account) -> Result<(AR, u64), AR> {
        if a.flags.bits() & !0x3f != 0 {
            return Err(AR::ReservedFlag);
        }
        if a.id == 0 {
            return Err(AR::IdMustNotBeZero);
        }
        if a.id == u128::MAX {
            return Err(AR::IdMustNotBeIntMax);
        }
        // Compared with the account as it is now (a closed account has the `closed` flag).
        if let Some(e) = self.account(a.id) {
            return if a.flags != e.flags {
                Err(AR::ExistsWithDifferentFlags)
            } else if a.user_data_128 != e.user_data_128 {
                Err(AR::ExistsWithDifferentUserData128)
            } else if a.user_data_64 != e.user_data_64 {
                Err(AR::ExistsWithDifferentUserData64)
            } else if a.user_data_32 != e.user_data_32 {
                Err(AR::ExistsWithDifferentUserData32)
            } else if a.ledger != e.ledger {
                Err(AR::ExistsWithDifferentLedger)
            } else if a.code != e.code {
                Err(AR::ExistsWithDifferentCode)
            } else {
                Ok((AR::Exists, e.timestamp))
            };
        }
        let both = AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS
            | AccountFlags::CREDITS_MUST_NOT_EXCEED_DEBITS;
        if a.flags.contains(both) {
            return Err(AR::FlagsAreMutuallyExclusive);
        }
        if a.debits_pending != 0 {
            return Err(AR::DebitsPendingMustBeZero);
        }
        if a.debits_posted != 0 {
            return Err(AR::DebitsPostedMustBeZero);
        }
        if a.credits_pending != 0 {
            return Err(AR::CreditsPendingMustBeZero);
        }
        if a.credits_posted != 0 {
            return Err(AR::CreditsPostedMustBeZero);
        }
        if a.ledger == 0 {
            return Err(AR::LedgerMustNotBeZero);
        }
        if a.code == 0 {
            return Err(AR::CodeMustNotBeZero);
        }
        let timestamp = if a.flags.contains(AccountFlags::IMPORTED) {
            let max_account = self.accounts.iter().map(|x| x.timestamp).max().unwrap_or(0);
            if a.timestamp <= max_account
                || self
                    .transfers
                    .iter()
                    .any(|t| t.transfer.timestamp == a.timestamp)
            {
                return Err(AR::ImportedEventTimestampMustNotRegress);
            }
            a.timestamp
        } else {
            ts
        };
        self.accounts.push(Account { timestamp, ..*a });
        Ok((AR::Created, timestamp))
    }

    fn imported_regressed(&self, ts: u64) -> bool {
        let max_transfer = self
            .transfers
            .iter()
            .map(|t| t.transfer.timestamp)
            .max()
            .unwrap_or(0);
        ts <= max_transfer
            || ts <= self.expiry_timestamp_last
            || self.accounts.iter().any(|a| a.timestamp == ts)
    }

    fn create_transfer(&mut self, ts: u64, t: &Transfer) -> Result<(TR, u64), TR> {
        let f = t.flags;
        if f.bits() & !0x1ff != 0 {
            return Err(TR::ReservedFlag);
        }
        if t.id == 0 {
            return Err(TR::IdMustNotBeZero);
        }
        if t.id == u128::MAX {
            return Err(TR::IdMustNotBeIntMax);
        }
        if let Some(e) = self.find_transfer(t.id) {
            return self.exists(t, &e.transfer.clone());
        }
        if self.failed.contains(&t.id) {
            return Err(TR::IdAlreadyFailed);
        }
        let post = f.contains(TransferFlags::POST_PENDING_TRANSFER);
        let void = f.contains(TransferFlags::VOID_PENDING_TRANSFER);
        if post || void {
            return self.post_or_void(ts, t, post, void);
        }
        if t.debit_account_id == 0 {
            return Err(TR::DebitAccountIdMustNotBeZero);
        }
        if t.debit_account_id == u128::MAX {
            return Err(TR::DebitAccountIdMustNotBeIntMax);
        }
        if t.credit_account_id == 0 {
            return Err(TR::CreditAccountIdMustNotBeZero);
        }
        if t.credit_account_id == u128::MAX {
            return Err(TR::CreditAccountIdMustNotBeIntMax);
        }
        if t.debit_account_id == t.credit_account_id {
            return Err(TR::AccountsMustBeDifferent);
        }
        if t.pending_id != 0 {
            return Err(TR::PendingIdMustBeZero);
        }
        let pending = f.contains(TransferFlags::PENDING);
        if !pending && t.timeout != 0 {
            return Err(TR::TimeoutReservedForPendingTransfer);
        }
        if !pending
            && (f.contains(TransferFlags::CLOSING_DEBIT)
                || f.contains(TransferFlags::CLOSING_CREDIT))
        {
            return Err(TR::ClosingTransferMustBePending);
        }
        if t.ledger == 0 {
            return Err(TR::LedgerMustNotBeZero);
        }
        if t.code == 0 {
            return Err(TR::CodeMustNotBeZero);
        }
        let Some(dr) = self.account(t.debit_account_id) else {
            return Err(TR::DebitAccountNotFound);
        };
        let Some(cr) = self.account(t.credit_account_id) else {
            return Err(TR::CreditAccountNotFound);
        };
        if dr.ledger != cr.ledger {
            return Err(TR::AccountsMustHaveTheSameLedger);
        }
        if t.ledger != dr.ledger {
            return Err(TR::TransferMustHaveTheSameLedgerAsAccounts);
        }
        let timestamp = if f.contains(TransferFlags::IMPORTED) {
            if self.imported_regressed(t.timestamp) {
                return Err(TR::ImportedEventTimestampMustNotRegress);
            }
            if t.timestamp <= dr.timestamp {
                return Err(TR::ImportedEventTimestampMustPostdateDebitAccount);
            }
            if t.timestamp <= cr.timestamp {
                return Err(TR::ImportedEventTimestampMustPostdateCreditAccount);
            }
            if t.timeout != 0 {
                return Err(TR::ImportedEventTimeoutMustBeZero);
            }
            t.timestamp
        } else {
            ts
        };
        if dr.flags.contains(AccountFlags::CLOSED) {
            return Err(TR::DebitAccountAlreadyClosed);
        }
        if cr.flags.contains(AccountFlags::CLOSED) {
            return Err(TR::CreditAccountAlreadyClosed);
        }
        let mut amount = t.amount;
        if f.contains(TransferFlags::BALANCING_DEBIT) {
            let room = dr
                .credits_posted
                .saturating_sub(dr.debits_posted + dr.debits_pending);
            amount = amount.min(room);
        }
        if f.contains(TransferFlags::BALANCING_CREDIT) {
            let room = cr
                .debits_posted
                .saturating_sub(cr.credits_posted + cr.credits_pending);
            amount = amount.min(room);
        }
        let overflows = |a: u128, b: u128| a.checked_add(b).is_none();
        if pending && overflows(amount, dr.debits_pending) {
            return Err(TR::OverflowsDebitsPending);
        }
        if pending && overflows(amount, cr.credits_pending) {
            return Err(TR::OverflowsCreditsPending);
        }
        if overflows(amount, dr.debits_posted) {
            return Err(TR::OverflowsDebitsPosted);
        }
        if overflows(amount, cr.credits_posted) {
            return Err(TR::OverflowsCreditsPosted);
        }
        if overflows(amount, dr.debits_pending + dr.debits_posted) {
            return Err(TR::OverflowsDebits);
        }
        if overflows(amount, cr.credits_pending + cr.credits_posted) {
            return Err(TR::OverflowsCredits);
        }
        if u128::from(timestamp) + u128::from(t.timeout) * 1_000_000_000 > u128::from(TS_MAX) {
            return Err(TR::OverflowsTimeout);
        }
        if dr
            .flags
            .contains(AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS)
            && dr.debits_pending + dr.debits_posted + amount > dr.credits_posted
        {
            return Err(TR::ExceedsCredits);
        }
        if cr
            .flags
            .contains(AccountFlags::CREDITS_MUST_NOT_EXCEED_DEBITS)
            && cr.credits_pending + cr.credits_posted + amount > cr.debits_posted
        {
            return Err(TR::ExceedsDebits);
        }
        let created = Transfer {
            amount,
            timestamp,
            ..*t
        };
        self.transfers.push(ModelTransfer {
            transfer: created,
            status: if pending { PS::Pending } else { PS::None },
            resolved_at: None,
        });
        self.changes.push((t.debit_account_id, timestamp));
        self.changes.push((t.credit_account_id, timestamp));
        Ok((TR::Created, timestamp))
    }

    fn post_or_void(
        &mut self,
        ts: u64,
        t: &Transfer,
        post: bool,
        void: bool,
    ) -> Result<(TR, u64), TR> {
        let f = t.flags;
        let forbidden = TransferFlags::PENDING
            | TransferFlags::BALANCING_DEBIT
            | TransferFlags::BALANCING_CREDIT
            | TransferFlags::CLOSING_DEBIT
            | TransferFlags::CLOSING_CREDIT;
        if (post && void) || f.intersects(forbidden) {
            return Err(TR::FlagsAreMutuallyExclusive);
        }
        if t.pending_id == 0 {
            return Err(TR::PendingIdMustNotBeZero);
        }
        if t.pending_id == u128::MAX {
            return Err(TR::PendingIdMustNotBeIntMax);
        }
        if t.pending_id == t.id {
            return Err(TR::PendingIdMustBeDifferent);
        }
        if t.timeout != 0 {
            return Err(TR::TimeoutReservedForPendingTransfer);
        }
        let Some(pi) = self
            .transfers
            .iter()
            .position(|x| x.transfer.id == t.pending_id)
        else {
            return Err(TR::PendingTransferNotFound);
        };
        let p = self.transfers[pi].transfer;
        if !p.flags.contains(TransferFlags::PENDING) {
            return Err(TR::PendingTransferNotPending);
        }
        if t.debit_account_id != 0 && t.debit_account_id != p.debit_account_id {
            return Err(TR::PendingTransferHasDifferentDebitAccountId);
        }
        if t.credit_account_id != 0 && t.credit_account_id != p.credit_account_id {
            return Err(TR::PendingTransferHasDifferentCreditAccountId);
        }
        if t.ledger != 0 && t.ledger != p.ledger {
            return Err(TR::PendingTransferHasDifferentLedger);
        }
        if t.code != 0 && t.code != p.code {
            return Err(TR::PendingTransferHasDifferentCode);
        }
        let amount = match (void, t.amount) {
            (true, 0) => p.amount,
            (false, u128::MAX) => p.amount,
            (_, amount) => amount,
        };
        if amount > p.amount {
            return Err(TR::ExceedsPendingTransferAmount);
        }
        if void && amount < p.amount {
            return Err(TR::PendingTransferHasDifferentAmount);
        }
        match self.transfers[pi].status {
            PS::Posted => return Err(TR::PendingTransferAlreadyPosted),
            PS::Voided => return Err(TR::PendingTransferAlreadyVoided),
            PS::Expired => return Err(TR::PendingTransferExpired),
            _ => {}
        }
        if p.timeout > 0 && p.timestamp + u64::from(p.timeout) * 1_000_000_000 <= ts {
            return Err(TR::PendingTransferExpired);
        }
        let timestamp = if f.contains(TransferFlags::IMPORTED) {
            if self.imported_regressed(t.timestamp) {
                return Err(TR::ImportedEventTimestampMustNotRegress);
            }
            t.timestamp
        } else {
            ts
        };
        let dr = self.account(p.debit_account_id).unwrap();
        let cr = self.account(p.credit_account_id).unwrap();
        if dr.flags.contains(AccountFlags::CLOSED) && !void {
            return Err(TR::DebitAccountAlreadyClosed);
        }
        if cr.flags.contains(AccountFlags::CLOSED) && !void {
            return Err(TR::CreditAccountAlreadyClosed);
        }
        self.transfers[pi].status = if post { PS::Posted } else { PS::Voided };
        self.transfers[pi].resolved_at = Some(timestamp);
        let pick = |mine: u128, theirs: u128| if mine != 0 { mine } else { theirs };
        let created = Transfer {
            id: t.id,
            debit_account_id: p.debit_account_id,
            credit_account_id: p.credit_account_id,
            amount,
            pending_id: t.pending_id,
            user_data_128: pick(t.user_data_128, p.user_data_128),
            user_data_64: pick(t.user_data_64.into(), p.user_data_64.into()) as u64,
            user_data_32: pick(t.user_data_32.into(), p.user_data_32.into()) as u32,
            timeout: 0,
            ledger: p.ledger,
            code: p.code,
            flags: t.flags,
            timestamp,
        };
        self.transfers.push(ModelTransfer {
            transfer: created,
            status: PS::None,
            resolved_at: None,
        });
        self.changes.push((p.debit_account_id, timestamp));
        self.changes.push((p.credit_account_id, timestamp));
        Ok((TR::Created, timestamp))
    }

    fn exists(&self, t: &Transfer, e: &Transfer) -> Result<(TR, u64), TR> {
        if t.flags != e.flags {
            return Err(TR::ExistsWithDifferentFlags);
        }
        if t.pending_id != e.pending_id {
            return Err(TR::ExistsWithDifferentPendingId);
        }
        if t.timeout != e.timeout {
            return Err(TR::ExistsWithDifferentTimeout);
        }
        let post_void = t.flags.intersects(
            TransferFlags::POST_PENDING_TRANSFER | TransferFlags::VOID_PENDING_TRANSFER,
        );
        if post_void {
            let p = self.find_transfer(t.pending_id).unwrap().transfer;
            if t.debit_account_id != 0 && t.debit_account_id != e.debit_account_id {
                return Err(TR::ExistsWithDifferentDebitAccountId);
            }
            if t.credit_account_id != 0 && t.credit_account_id != e.credit_account_id {
                return Err(TR::ExistsWithDifferentCreditAccountId);
            }
            let void = t.flags.contains(TransferFlags::VOID_PENDING_TRANSFER);
            let requested = match (void, t.amount) {
                (true, 0) | (false, u128::MAX) => p.amount,
                (_, amount) => amount,
            };
            if requested != e.amount {
                return Err(TR::ExistsWithDifferentAmount);
            }
            let expect = |mine: u128, theirs: u128| if mine == 0 { theirs } else { mine };
            if expect(t.user_data_128, p.user_data_128) != e.user_data_128 {
                return Err(TR::ExistsWithDifferentUserData128);
            }
            if expect(t.user_data_64.into(), p.user_data_64.into()) != u128::from(e.user_data_64) {
                return Err(TR::ExistsWithDifferentUserData64);
            }
            if expect(t.user_data_32.into(), p.user_data_32.into()) != u128::from(e.user_data_32) {
                return Err(TR::ExistsWithDifferentUserData32);
            }
            if t.ledger != 0 && t.ledger != e.ledger {
                return Err(TR::ExistsWithDifferentLedger);
            }
            if t.code != 0 && t.code != e.code {
                return Err(TR::ExistsWithDifferentCode);
            }
            return Ok((TR::Exists, e.timestamp));
        }
        if t.debit_account_id != e.debit_account_id {
            return Err(TR::ExistsWithDifferentDebitAccountId);
        }
        if t.credit_account_id != e.credit_account_id {
            return Err(TR::ExistsWithDifferentCreditAccountId);
        }
        let balancing = t
            .flags
            .intersects(TransferFlags::BALANCING_DEBIT | TransferFlags::BALANCING_CREDIT);
        if (balancing && t.amount < e.amount) || (!balancing && t.amount != e.amount) {
            return Err(TR::ExistsWithDifferentAmount);
        }
        if t.user_data_128 != e.user_data_128 {
            return Err(TR::ExistsWithDifferentUserData128);
        }
        if t.user_data_64 != e.user_data_64 {
            return Err(TR::ExistsWithDifferentUserData64);
        }
        if t.user_data_32 != e.user_data_32 {
            return Err(TR::ExistsWithDifferentUserData32);
        }
        if t.ledger != e.ledger {
            return Err(TR::ExistsWithDifferentLedger);
        }
        if t.code != e.code {
            return Err(TR::ExistsWithDifferentCode);
        }
        Ok((TR::Exists, e.timestamp))
    }

    fn filter_matches(filter: &AccountFilter, t: &Transfer) -> bool {
        let id = filter.account_id;
        ((filter.flags.contains(AccountFilterFlags::DEBITS) && t.debit_account_id == id)
            || (filter.flags.contains(AccountFilterFlags::CREDITS) && t.credit_account_id == id))
            && (filter.user_data_128 == 0 || filter.user_data_128 == t.user_data_128)
            && (filter.user_data_64 == 0 || filter.user_data_64 == t.user_data_64)
            && (filter.user_data_32 == 0 || filter.user_data_32 == t.user_data_32)
            && (filter.code == 0 || filter.code == t.code)
            && t.timestamp >= filter.timestamp_min
            && (filter.timestamp_max == 0 || t.timestamp <= filter.timestamp_max)
    }

    pub fn get_account_transfers(&self, filter: &AccountFilter) -> Vec<Transfer> {
        let mut all: Vec<Transfer> = self
            .transfers
            .iter()
            .map(|mt| mt.transfer)
            .filter(|t| Self::filter_matches(filter, t))
            .collect();
        all.sort_by_key(|t| t.timestamp);
        if filter.flags.contains(AccountFilterFlags::REVERSED) {
            all.reverse();
        }
        all.truncate((filter.limit as usize).min(EVENTS_MAX));
        all
    }

    pub fn get_account_balances(&self, filter: &AccountFilter) -> Vec<AccountBalance> {
        let Some(account) = self.created_account(filter.account_id) else {
            return Vec::new();
        };
        if !account.flags.contains(AccountFlags::HISTORY) {
            return Vec::new();
        }
        let mut rows = Vec::new();
        for &(id, ts) in &self.changes {
            if id != filter.account_id {
                continue;
            }
            // The transfer behind this change: created at `ts`, or a pending one expired at `ts`.
            let behind = self
                .transfers
                .iter()
                .find(|mt| {
                    mt.transfer.timestamp == ts
                        || (mt.status == PS::Expired && mt.resolved_at == Some(ts))
                })
                .map(|mt| Transfer {
                    timestamp: ts,
                    ..mt.transfer
                })
                .unwrap();
            if !Self::filter_matches(filter, &behind) {
                continue;
            }
            let a = self.account_at(id, ts).unwrap();
            rows.push(AccountBalance {
                debits_pending: a.debits_pending,
                debits_posted: a.debits_posted,
                credits_pending: a.credits_pending,
                credits_posted: a.credits_posted,
                timestamp: ts,
            });
        }
        if filter.flags.contains(AccountFilterFlags::REVERSED) {
            rows.reverse();
        }
        rows.truncate((filter.limit as usize).min(EVENTS_MAX));
        rows
    }
}
