"""Query text into the inputs IMG needs: tokenisation, GloVe vocabularies, BERT and CLIP text features."""
