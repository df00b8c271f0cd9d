"""Access control: identities and API tokens (`tokens`), the one authentication check both planes use
(`authn`), workspace roles (`roles`) and the audit trail (`audit`)."""
