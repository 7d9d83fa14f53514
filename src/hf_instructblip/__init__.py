"""hf_instructblip: InstructBLIP on the Hugging Face stack."""
