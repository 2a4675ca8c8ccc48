"""Provider adapters: anthropic, openai (and compatible servers), and the offline sim."""
