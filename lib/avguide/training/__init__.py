"""Lightning modules and trainer set-up shared by the training stages."""
