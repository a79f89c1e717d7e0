"""What a trained run becomes for users: the served module (signatures, request
checks, the pixel budget), the SavedModel export, prediction on files, LiteRT."""
