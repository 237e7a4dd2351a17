"""Looking at a built dataset: the dataset card, the HTML viewer, the Hugging Face parquet export."""
