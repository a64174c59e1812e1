"""The active-learning campaign. So far: :mod:`workbench.campaign.replay`, a campaign
against a labeled pool, measured beside random selection."""
