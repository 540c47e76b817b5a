"""The notifications service. Templates, webhooks and the delivery log of emails and webhooks."""
