"""The LLM side: backbone loading and vocabulary extension, alignment tasks, fine-tuning."""
