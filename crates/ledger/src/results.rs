//! Result codes of `create_accounts` and `create_transfers`, one per event.
//!
//! The variants are declared in order of descending precedence, exactly as TigerBeetle's
//! reference lists them: when several reasons apply to one event, the first one listed wins.
//! The numeric codes are fincore's own and stable (they are stored in nothing, but clients may
//! switch on them); the snake_case names are what the HTTP/JSON API shows.

macro_rules! result_codes {
    ($(#[$doc:meta])* $name:ident {
        $($(#[$variant_doc:meta])* $variant:ident = $code:literal => $text:literal,)+
    }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u32)]
        pub enum $name {
            $($(#[$variant_doc])* $variant = $code,)+
        }

        impl $name {
            /// Every code, in order of descending precedence.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The snake_case name used in APIs and logs.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }

            /// The code with this snake_case name.
            pub fn from_name(name: &str) -> Option<Self> {
                match name {
                    $($text => Some($name::$variant),)+
                    _ => None,
                }
            }

            /// The stable numeric code.
            pub fn code(self) -> u32 {
                self as u32
            }

            /// The result with this numeric code.
            pub fn from_code(code: u32) -> Option<Self> {
                match code {
                    $($code => Some($name::$variant),)+
                    _ => None,
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

result_codes! {
    /// The outcome of one event of `create_accounts`.
    CreateAccountResult {
        Created = 0 => "created",
        LinkedEventFailed = 1 => "linked_event_failed",
        LinkedEventChainOpen = 2 => "linked_event_chain_open",
        ImportedEventExpected = 3 => "imported_event_expected",
        ImportedEventNotExpected = 4 => "imported_event_not_expected",
        TimestampMustBeZero = 5 => "timestamp_must_be_zero",
        ImportedEventTimestampOutOfRange = 6 => "imported_event_timestamp_out_of_range",
        ImportedEventTimestampMustNotAdvance = 7 => "imported_event_timestamp_must_not_advance",
        ReservedFlag = 8 => "reserved_flag",
        IdMustNotBeZero = 9 => "id_must_not_be_zero",
        IdMustNotBeIntMax = 10 => "id_must_not_be_int_max",
        ExistsWithDifferentFlags = 11 => "exists_with_different_flags",
        ExistsWithDifferentUserData128 = 12 => "exists_with_different_user_data_128",
        ExistsWithDifferentUserData64 = 13 => "exists_with_different_user_data_64",
        ExistsWithDifferentUserData32 = 14 => "exists_with_different_user_data_32",
        ExistsWithDifferentLedger = 15 => "exists_with_different_ledger",
        ExistsWithDifferentCode = 16 => "exists_with_different_code",
        Exists = 17 => "exists",
        FlagsAreMutuallyExclusive = 18 => "flags_are_mutually_exclusive",
        DebitsPendingMustBeZero = 19 => "debits_pending_must_be_zero",
        DebitsPostedMustBeZero = 20 => "debits_posted_must_be_zero",
        CreditsPendingMustBeZero = 21 => "credits_pending_must_be_zero",
        CreditsPostedMustBeZero = 22 => "credits_posted_must_be_zero",
        LedgerMustNotBeZero = 23 => "ledger_must_not_be_zero",
        CodeMustNotBeZero = 24 => "code_must_not_be_zero",
        ImportedEventTimestampMustNotRegress = 25 => "imported_event_timestamp_must_not_regress",
        /// fincore's own (not TigerBeetle's): the account would take the ledger past the
        /// accounts capacity `apply` enforces. Nothing changed; the id is not burnt.
        CapacityReached = 1000 => "capacity_reached",
    }
}

result_codes! {
    /// The outcome of one event of `create_transfers`.
    CreateTransferResult {
        Created = 0 => "created",
        LinkedEventFailed = 1 => "linked_event_failed",
        LinkedEventChainOpen = 2 => "linked_event_chain_open",
        ImportedEventExpected = 3 => "imported_event_expected",
        ImportedEventNotExpected = 4 => "imported_event_not_expected",
        TimestampMustBeZero = 5 => "timestamp_must_be_zero",
        ImportedEventTimestampOutOfRange = 6 => "imported_event_timestamp_out_of_range",
        ImportedEventTimestampMustNotAdvance = 7 => "imported_event_timestamp_must_not_advance",
        ReservedFlag = 8 => "reserved_flag",
        IdMustNotBeZero = 9 => "id_must_not_be_zero",
        IdMustNotBeIntMax = 10 => "id_must_not_be_int_max",
        ExistsWithDifferentFlags = 11 => "exists_with_different_flags",
        ExistsWithDifferentPendingId = 12 => "exists_with_different_pending_id",
        ExistsWithDifferentTimeout = 13 => "exists_with_different_timeout",
        ExistsWithDifferentDebitAccountId = 14 => "exists_with_different_debit_account_id",
        ExistsWithDifferentCreditAccountId = 15 => "exists_with_different_credit_account_id",
        ExistsWithDifferentAmount = 16 => "exists_with_different_amount",
        ExistsWithDifferentUserData128 = 17 => "exists_with_different_user_data_128",
        ExistsWithDifferentUserData64 = 18 => "exists_with_different_user_data_64",
        ExistsWithDifferentUserData32 = 19 => "exists_with_different_user_data_32",
        ExistsWithDifferentLedger = 20 => "exists_with_different_ledger",
        ExistsWithDifferentCode = 21 => "exists_with_different_code",
        Exists = 22 => "exists",
        IdAlreadyFailed = 23 => "id_already_failed",
        FlagsAreMutuallyExclusive = 24 => "flags_are_mutually_exclusive",
        DebitAccountIdMustNotBeZero = 25 => "debit_account_id_must_not_be_zero",
        DebitAccountIdMustNotBeIntMax = 26 => "debit_account_id_must_not_be_int_max",
        CreditAccountIdMustNotBeZero = 27 => "credit_account_id_must_not_be_zero",
        CreditAccountIdMustNotBeIntMax = 28 => "credit_account_id_must_not_be_int_max",
        AccountsMustBeDifferent = 29 => "accounts_must_be_different",
        PendingIdMustBeZero = 30 => "pending_id_must_be_zero",
        PendingIdMustNotBeZero = 31 => "pending_id_must_not_be_zero",
        PendingIdMustNotBeIntMax = 32 => "pending_id_must_not_be_int_max",
        PendingIdMustBeDifferent = 33 => "pending_id_must_be_different",
        TimeoutReservedForPendingTransfer = 34 => "timeout_reserved_for_pending_transfer",
        ClosingTransferMustBePending = 35 => "closing_transfer_must_be_pending",
        LedgerMustNotBeZero = 36 => "ledger_must_not_be_zero",
        CodeMustNotBeZero = 37 => "code_must_not_be_zero",
        DebitAccountNotFound = 38 => "debit_account_not_found",
        CreditAccountNotFound = 39 => "credit_account_not_found",
        AccountsMustHaveTheSameLedger = 40 => "accounts_must_have_the_same_ledger",
        TransferMustHaveTheSameLedgerAsAccounts = 41 => "transfer_must_have_the_same_ledger_as_accounts",
        PendingTransferNotFound = 42 => "pending_transfer_not_found",
        PendingTransferNotPending = 43 => "pending_transfer_not_pending",
        PendingTransferHasDifferentDebitAccountId = 44 => "pending_transfer_has_different_debit_account_id",
        PendingTransferHasDifferentCreditAccountId = 45 => "pending_transfer_has_different_credit_account_id",
        PendingTransferHasDifferentLedger = 46 => "pending_transfer_has_different_ledger",
        PendingTransferHasDifferentCode = 47 => "pending_transfer_has_different_code",
        ExceedsPendingTransferAmount = 48 => "exceeds_pending_transfer_amount",
        PendingTransferHasDifferentAmount = 49 => "pending_transfer_has_different_amount",
        PendingTransferAlreadyPosted = 50 => "pending_transfer_already_posted",
        PendingTransferAlreadyVoided = 51 => "pending_transfer_already_voided",
        PendingTransferExpired = 52 => "pending_transfer_expired",
        ImportedEventTimestampMustNotRegress = 53 => "imported_event_timestamp_must_not_regress",
        ImportedEventTimestampMustPostdateDebitAccount = 54 => "imported_event_timestamp_must_postdate_debit_account",
        ImportedEventTimestampMustPostdateCreditAccount = 55 => "imported_event_timestamp_must_postdate_credit_account",
        ImportedEventTimeoutMustBeZero = 56 => "imported_event_timeout_must_be_zero",
        DebitAccountAlreadyClosed = 57 => "debit_account_already_closed",
        CreditAccountAlreadyClosed = 58 => "credit_account_already_closed",
        OverflowsDebitsPending = 59 => "overflows_debits_pending",
        OverflowsCreditsPending = 60 => "overflows_credits_pending",
        OverflowsDebitsPosted = 61 => "overflows_debits_posted",
        OverflowsCreditsPosted = 62 => "overflows_credits_posted",
        OverflowsDebits = 63 => "overflows_debits",
        OverflowsCredits = 64 => "overflows_credits",
        OverflowsTimeout = 65 => "overflows_timeout",
        ExceedsCredits = 66 => "exceeds_credits",
        ExceedsDebits = 67 => "exceeds_debits",
        /// fincore's own (not TigerBeetle's): the transfer would take the ledger past the
        /// transfers capacity `apply` enforces. Nothing changed; the id is not burnt.
        CapacityReached = 1000 => "capacity_reached",
        /// fincore's own, answered only by a gateway: the transfer runs across groups and its
        /// saga had not ended by the gateway's deadline. It ends by itself (the gateway, or
        /// any gateway's resolver, finishes it within the saga bound), as `created` or as a
        /// failure; poll its outcome by id (`POST /v1/transfers/outcomes`, gRPC
        /// `LookupOutcomes`), or resubmit it unchanged, which drives it and answers its result.
        OutcomePending = 1001 => "outcome_pending",
    }
}

impl CreateTransferResult {
    /// Failures that depend on the ledger's state at that moment rather than on the event
    /// itself. An id that failed this way is burnt: resubmitting it answers `id_already_failed`
    /// so that a retry can never succeed later and post twice what the caller retried elsewhere.
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            Self::DebitAccountNotFound
                | Self::CreditAccountNotFound
                | Self::PendingTransferNotFound
                | Self::ExceedsCredits
                | Self::ExceedsDebits
                | Self::DebitAccountAlreadyClosed
                | Self::CreditAccountAlreadyClosed
        )
    }
}

/// The result of one event with the timestamp that goes with it: the object's timestamp for
/// `created` and `exists`, otherwise the moment the event was validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EventResult<R> {
    pub result: R,
    pub timestamp: u64,
}
